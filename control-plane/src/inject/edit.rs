//! One change to a document, applied twice: to its data, which says what
//! the result must be, and to its text, which keeps everything else as
//! it was.

use serde_yaml::Value;

use super::text::{self, Step};

#[derive(Clone, Debug)]
pub enum Edit {
    /// `key: value` added to the mapping at `map`, which lacks `key`.
    AddEntry {
        map: Vec<Step>,
        key: String,
        value: Value,
    },
    /// `key` and its value taken out of the mapping at `map`.
    RemoveEntry { map: Vec<Step>, key: String },
    /// `item` put first or last in the sequence at `seq`.
    InsertItem {
        seq: Vec<Step>,
        first: bool,
        item: Value,
    },
    /// The item at `index` of the sequence at `seq` replaced by `item`.
    ReplaceItem {
        seq: Vec<Step>,
        index: usize,
        item: Value,
    },
    /// The item at `index` of the sequence at `seq` taken out.
    RemoveItem { seq: Vec<Step>, index: usize },
}

/// The value at `path` in `value`.
pub fn get<'a>(value: &'a Value, path: &[Step]) -> Option<&'a Value> {
    path.iter().try_fold(value, |at, step| match step {
        Step::Key(key) => at.get(key.as_str()),
        Step::Index(i) => at.get(*i),
    })
}

fn get_mut<'a>(value: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |at, step| match step {
        Step::Key(key) => at.get_mut(key.as_str()),
        Step::Index(i) => at.get_mut(*i),
    })
}

impl Edit {
    /// Applies the edit to the document's data. The plan that made the
    /// edit looked at this same data, so the path is there.
    pub fn apply_to_value(&self, document: &mut Value) {
        match self {
            Edit::AddEntry { map, key, value } => {
                if let Some(Value::Mapping(m)) = get_mut(document, map) {
                    m.insert(key.as_str().into(), value.clone());
                }
            }
            Edit::RemoveEntry { map, key } => {
                if let Some(Value::Mapping(m)) = get_mut(document, map) {
                    m.shift_remove(key.as_str());
                }
            }
            Edit::InsertItem { seq, first, item } => {
                if let Some(Value::Sequence(s)) = get_mut(document, seq) {
                    match first {
                        true => s.insert(0, item.clone()),
                        false => s.push(item.clone()),
                    }
                }
            }
            Edit::ReplaceItem { seq, index, item } => {
                if let Some(slot) = get_mut(document, seq).and_then(|s| s.get_mut(*index)) {
                    *slot = item.clone();
                }
            }
            Edit::RemoveItem { seq, index } => {
                if let Some(Value::Sequence(s)) = get_mut(document, seq) {
                    if *index < s.len() {
                        s.remove(*index);
                    }
                }
            }
        }
    }

    /// Applies the edit to the document's text; `None` when the text
    /// cannot be edited in place (see [`text`]).
    pub fn apply_to_text(&self, document: &str) -> Option<String> {
        let root = text::parse(document)?;
        match self {
            Edit::AddEntry { map, key, value } => text::add_entry(document, &root, map, key, value),
            Edit::RemoveEntry { map, key } => text::remove_entry(document, &root, map, key),
            Edit::InsertItem { seq, first, item } => {
                text::insert_item(document, &root, seq, *first, item)
            }
            Edit::ReplaceItem { seq, index, item } => {
                text::replace_item(document, &root, seq, *index, item)
            }
            Edit::RemoveItem { seq, index } => text::remove_item(document, &root, seq, *index),
        }
    }
}
