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
    /// Each of `entries` set in the mapping at `map`: a key it has keeps
    /// its place, a new one goes last. In text, each entry's lines are
    /// written anew and the others left; a flow mapping is written anew in
    /// block style as the value of the block mapping's entry that holds it.
    SetEntries {
        map: Vec<Step>,
        entries: serde_yaml::Mapping,
    },
    /// `item` put before the item at `index` of the sequence at `seq`;
    /// last when `index` is its length or more.
    InsertItem {
        seq: Vec<Step>,
        index: usize,
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
    /// The same edit of a node that sits at `at` in the document: its
    /// path made one from the document's root.
    fn placed_at(self, at: &[Step]) -> Edit {
        let place = |path: Vec<Step>| at.iter().cloned().chain(path).collect();
        match self {
            Edit::AddEntry { map, key, value } => Edit::AddEntry {
                map: place(map),
                key,
                value,
            },
            Edit::RemoveEntry { map, key } => Edit::RemoveEntry {
                map: place(map),
                key,
            },
            Edit::SetEntries { map, entries } => Edit::SetEntries {
                map: place(map),
                entries,
            },
            Edit::InsertItem { seq, index, item } => Edit::InsertItem {
                seq: place(seq),
                index,
                item,
            },
            Edit::ReplaceItem { seq, index, item } => Edit::ReplaceItem {
                seq: place(seq),
                index,
                item,
            },
            Edit::RemoveItem { seq, index } => Edit::RemoveItem {
                seq: place(seq),
                index,
            },
        }
    }

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
            Edit::SetEntries { map, entries } => {
                if let Some(Value::Mapping(m)) = get_mut(document, map) {
                    for (key, value) in entries {
                        m.insert(key.clone(), value.clone());
                    }
                }
            }
            Edit::InsertItem { seq, index, item } => {
                if let Some(Value::Sequence(s)) = get_mut(document, seq) {
                    s.insert((*index).min(s.len()), item.clone());
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
            Edit::SetEntries { map, entries } => set_entries(document, map, entries),
            Edit::InsertItem { seq, index, item } => {
                text::insert_item(document, &root, seq, *index, item)
            }
            Edit::ReplaceItem { seq, index, item } => {
                text::replace_item(document, &root, seq, *index, item)
            }
            Edit::RemoveItem { seq, index } => text::remove_item(document, &root, seq, *index),
        }
    }
}

/// [`Edit::SetEntries`] on text: entry by entry in a block mapping; a flow
/// one (`httpGet: {port: 8080}`) written anew, edited, as the value of the
/// nearest block mapping's entry above it.
fn set_entries(document: &str, map: &[Step], entries: &serde_yaml::Mapping) -> Option<String> {
    let in_block = entries
        .iter()
        .try_fold(document.to_string(), |text, (key, value)| {
            let root = text::parse(&text)?;
            let key = key.as_str()?;
            match root.get(map)?.get(&[Step::Key(key.into())]) {
                Some(_) => text::replace_entry(&text, &root, map, key, value),
                None => text::add_entry(&text, &root, map, key, value),
            }
        });
    if in_block.is_some() {
        return in_block;
    }
    let mut data: Value = serde_yaml::from_str(document).ok()?;
    let edit = Edit::SetEntries {
        map: map.to_vec(),
        entries: entries.clone(),
    };
    edit.apply_to_value(&mut data);
    let root = text::parse(document)?;
    (0..map.len()).rev().find_map(|depth| {
        let Step::Key(key) = &map[depth] else {
            return None;
        };
        let value = get(&data, &map[..=depth])?;
        text::replace_entry(document, &root, &map[..depth], key, value)
    })
}

/// The edits of one node (a pod template), with paths from that node, each
/// made on the data the ones before it left: an index or key an edit names
/// is the one it will meet when the edits are applied in turn.
pub struct Edits {
    node: Value,
    list: Vec<Edit>,
}

impl Edits {
    pub fn new(node: &Value) -> Edits {
        Edits {
            node: node.clone(),
            list: Vec::new(),
        }
    }

    /// The value at `path` in the node as the edits so far left it.
    pub fn get(&self, path: &[Step]) -> Option<&Value> {
        get(&self.node, path)
    }

    pub fn push(&mut self, edit: Edit) {
        edit.apply_to_value(&mut self.node);
        self.list.push(edit);
    }

    /// The edits, for the node at `at` in the document.
    pub fn placed_at(self, at: &[Step]) -> Vec<Edit> {
        self.list.into_iter().map(|e| e.placed_at(at)).collect()
    }
}
