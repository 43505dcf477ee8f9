//! Edits one YAML document as text, so that everything the edit does not
//! touch (comments, quoting, key order, blank lines) stays byte for byte.
//! serde_yaml would give back the data but drop all of that.
//!
//! The document is parsed with yaml-rust2, whose events carry where each
//! node starts; a block collection ends where the next token starts. Edits
//! insert, replace or remove whole lines of block collections. What this
//! cannot do as text (a flow collection, a key with a null value) it says
//! by answering `None`, and the caller writes that document out in full.

use serde_yaml::Value;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One step of a path into a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// A node of the document, with where its text lies.
#[derive(Debug)]
pub struct Node {
    /// A block mapping's first key, a block sequence's first item (or its
    /// `-`), a flow collection's bracket, a scalar's first character.
    start: usize,
    /// Where the token after the node starts; for a flow collection, just
    /// past its closing bracket.
    end: usize,
    flow: bool,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Scalar,
    Map(Vec<Entry>),
    Seq(Vec<Node>),
}

#[derive(Debug)]
struct Entry {
    key: String,
    key_start: usize,
    value: Node,
}

/// Parses `text`, one YAML document; `None` when it holds no node (only
/// comments) or is not YAML (which the caller has already ruled out).
pub fn parse(text: &str) -> Option<Node> {
    let mut builder = Builder {
        text,
        bytes_of_chars: (!text.is_ascii()).then(|| text.char_indices().map(|(at, _)| at).collect()),
        stack: Vec::new(),
        root: None,
    };
    Parser::new_from_str(text).load(&mut builder, false).ok()?;
    builder.root
}

struct Builder<'a> {
    text: &'a str,
    /// The byte offset of each character, when some take more than one byte.
    bytes_of_chars: Option<Vec<usize>>,
    stack: Vec<Open>,
    root: Option<Node>,
}

/// A collection being read: its node so far, where its start event was,
/// and a mapping's key awaiting its value.
struct Open {
    node: Node,
    marker: usize,
    pending_key: Option<(String, usize)>,
}

impl Builder<'_> {
    fn byte(&self, marker: Marker) -> usize {
        match &self.bytes_of_chars {
            None => marker.index(),
            Some(bytes) => bytes
                .get(marker.index())
                .copied()
                .unwrap_or(self.text.len()),
        }
    }

    fn add(&mut self, node: Node, scalar: Option<String>) {
        let Some(open) = self.stack.last_mut() else {
            self.root = Some(node);
            return;
        };
        match &mut open.node.kind {
            Kind::Map(entries) => match open.pending_key.take() {
                Some((key, key_start)) => entries.push(Entry {
                    key,
                    key_start,
                    value: node,
                }),
                // A key: complex keys are not something a workload has;
                // they keep an empty name and are never edited.
                None => open.pending_key = Some((scalar.unwrap_or_default(), node.start)),
            },
            Kind::Seq(items) => items.push(node),
            Kind::Scalar => unreachable!("a scalar holds nothing"),
        }
    }

    fn close(&mut self, end_marker: usize) {
        let Some(Open {
            mut node, marker, ..
        }) = self.stack.pop()
        else {
            return;
        };
        let first_child = match &node.kind {
            Kind::Map(entries) => entries.first().map(|e| e.key_start),
            Kind::Seq(items) => items.first().map(|i| i.start),
            Kind::Scalar => None,
        };
        let opener = self.text[marker..].chars().next();
        node.flow = match node.kind {
            // A block mapping's start event sits at its first value, after
            // its first key; a flow mapping's at its brace, before it.
            Kind::Map(_) => opener == Some('{') && first_child.is_none_or(|first| first > marker),
            // A block sequence's start event sits at its first `-`, or at
            // its first item when the `-` is at the parent key's column.
            _ => opener == Some('[') && !self.text[..marker].trim_end().ends_with('-'),
        };
        node.start = match (node.flow, first_child) {
            (false, Some(first)) => first.min(marker),
            _ => marker,
        };
        node.end = if node.flow {
            end_marker + 1
        } else {
            end_marker
        };
        self.add(node, None);
    }
}

impl MarkedEventReceiver for Builder<'_> {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let at = self.byte(mark);
        let open = |kind| Open {
            node: Node {
                start: at,
                end: at,
                flow: false,
                kind,
            },
            marker: at,
            pending_key: None,
        };
        match event {
            Event::Scalar(value, ..) => {
                let node = Node {
                    start: at,
                    end: at,
                    flow: false,
                    kind: Kind::Scalar,
                };
                self.add(node, Some(value));
            }
            Event::Alias(_) => {
                let node = Node {
                    start: at,
                    end: at,
                    flow: false,
                    kind: Kind::Scalar,
                };
                self.add(node, None);
            }
            Event::MappingStart(..) => self.stack.push(open(Kind::Map(Vec::new()))),
            Event::SequenceStart(..) => self.stack.push(open(Kind::Seq(Vec::new()))),
            Event::MappingEnd | Event::SequenceEnd => self.close(at),
            _ => {}
        }
    }
}

impl Node {
    /// The node at `path` below this one.
    pub fn get(&self, path: &[Step]) -> Option<&Node> {
        let Some((step, rest)) = path.split_first() else {
            return Some(self);
        };
        let child = match (&self.kind, step) {
            (Kind::Map(entries), Step::Key(key)) => &entries.iter().find(|e| &e.key == key)?.value,
            (Kind::Seq(items), Step::Index(i)) => items.get(*i)?,
            _ => return None,
        };
        child.get(rest)
    }

    fn entry(&self, key: &str) -> Option<(usize, &Entry)> {
        match &self.kind {
            Kind::Map(entries) => entries.iter().enumerate().find(|(_, e)| e.key == key),
            _ => None,
        }
    }
}

/// Adds `key: value` at the end of the block mapping at `map`, which has
/// no such key.
pub fn add_entry(
    text: &str,
    root: &Node,
    map: &[Step],
    key: &str,
    value: &Value,
) -> Option<String> {
    let node = root.get(map)?;
    let Kind::Map(entries) = &node.kind else {
        return None;
    };
    let first = entries.first()?;
    if node.flow || node.entry(key).is_some() {
        return None;
    }
    let column = column_of(text, first.key_start)?;
    let at = block_end(text, node.start, node.end)?;
    Some(splice(text, at..at, &render_entry(key, value, column)))
}

/// Removes the entry `key` of the block mapping at `map`, its value with it.
pub fn remove_entry(text: &str, root: &Node, map: &[Step], key: &str) -> Option<String> {
    let (lines, _) = entry_lines(text, root, map, key)?;
    Some(splice(text, lines, ""))
}

/// Replaces the value of the entry `key` of the block mapping at `map`
/// where the entry stands: its lines (a comment on them included) are
/// written anew, in block style.
pub fn replace_entry(
    text: &str,
    root: &Node,
    map: &[Step],
    key: &str,
    value: &Value,
) -> Option<String> {
    let (lines, column) = entry_lines(text, root, map, key)?;
    Some(splice(text, lines, &render_entry(key, value, column)))
}

/// The whole lines the entry `key` of the block mapping at `map` takes,
/// and the column of its key.
fn entry_lines(
    text: &str,
    root: &Node,
    map: &[Step],
    key: &str,
) -> Option<(std::ops::Range<usize>, usize)> {
    let node = root.get(map)?;
    let Kind::Map(entries) = &node.kind else {
        return None;
    };
    let (index, entry) = node.entry(key)?;
    if node.flow {
        return None;
    }
    let column = column_of(text, entry.key_start)?;
    let from = line_start(text, entry.key_start);
    let to = match entries.get(index + 1) {
        Some(next) => block_end(text, entry.key_start, line_start(text, next.key_start))?,
        None => block_end(text, entry.key_start, node.end)?,
    };
    Some((from..to, column))
}

/// Puts `item` before the item at `index` of the block sequence at `seq`
/// (last when `index` is its length or more): after the lines of the item
/// before it, so that comments above the next item stay with it.
pub fn insert_item(
    text: &str,
    root: &Node,
    seq: &[Step],
    index: usize,
    item: &Value,
) -> Option<String> {
    let node = root.get(seq)?;
    let Kind::Seq(items) = &node.kind else {
        return None;
    };
    if node.flow {
        return None;
    }
    let dash = dash_of(text, items.first()?.start)?;
    let column = column_of(text, dash)?;
    let at = if index == 0 {
        line_start(text, dash)
    } else if index >= items.len() {
        block_end(text, node.start, node.end)?
    } else {
        item_lines(text, root, seq, index - 1)?.0.end
    };
    Some(splice(text, at..at, &render_item(item, column)))
}

/// Replaces the item at `index` of the block sequence at `seq` by `item`.
pub fn replace_item(
    text: &str,
    root: &Node,
    seq: &[Step],
    index: usize,
    item: &Value,
) -> Option<String> {
    let (lines, column) = item_lines(text, root, seq, index)?;
    Some(splice(text, lines, &render_item(item, column)))
}

/// Removes the item at `index` of the block sequence at `seq`.
pub fn remove_item(text: &str, root: &Node, seq: &[Step], index: usize) -> Option<String> {
    let (lines, _) = item_lines(text, root, seq, index)?;
    Some(splice(text, lines, ""))
}

/// The whole lines an item of a block sequence takes, and the column of
/// its `-`.
fn item_lines(
    text: &str,
    root: &Node,
    seq: &[Step],
    index: usize,
) -> Option<(std::ops::Range<usize>, usize)> {
    let node = root.get(seq)?;
    let Kind::Seq(items) = &node.kind else {
        return None;
    };
    if node.flow {
        return None;
    }
    let item = items.get(index)?;
    let dash = dash_of(text, item.start)?;
    let column = column_of(text, dash)?;
    let next = match items.get(index + 1) {
        Some(next) => line_start(text, dash_of(text, next.start)?),
        None => node.end,
    };
    let from = line_start(text, dash);
    Some((from..block_end(text, dash, next)?, column))
}

/// Where a block node that ends at `end` (the next token) really ends: the
/// start of that token's line, less the blank and comment lines before
/// it, which belong to what follows. `None` when the next token is not
/// the first on its line.
fn block_end(text: &str, start: usize, end: usize) -> Option<usize> {
    let mut at = line_start(text, end);
    if !text[at..end].trim().is_empty() {
        return None;
    }
    while at > start {
        let previous = line_start(text, at - 1);
        let line = text[previous..at].trim();
        if previous <= start || !(line.is_empty() || line.starts_with('#')) {
            break;
        }
        at = previous;
    }
    Some(at)
}

/// The `-` that opens the sequence item whose content starts at `content`.
fn dash_of(text: &str, content: usize) -> Option<usize> {
    let before = text[..content].trim_end_matches([' ', '\t', '\n', '\r']);
    before.ends_with('-').then(|| before.len() - 1)
}

fn line_start(text: &str, at: usize) -> usize {
    text[..at].rfind('\n').map_or(0, |newline| newline + 1)
}

/// The column of `at`, when only spaces come before it on its line.
fn column_of(text: &str, at: usize) -> Option<usize> {
    let start = line_start(text, at);
    text[start..at]
        .bytes()
        .all(|b| b == b' ')
        .then_some(at - start)
}

fn splice(text: &str, range: std::ops::Range<usize>, with: &str) -> String {
    let mut out = String::with_capacity(text.len() + with.len());
    out.push_str(&text[..range.start]);
    out.push_str(with);
    out.push_str(&text[range.end..]);
    out
}

/// `value` as block YAML, every line indented by `column`.
fn render_block(value: &Value, column: usize) -> String {
    let yaml = serde_yaml::to_string(value).expect("a Value always serializes");
    let pad = " ".repeat(column);
    yaml.lines().map(|line| format!("{pad}{line}\n")).collect()
}

/// `key: value` at `column`; a collection goes on the lines below, a
/// sequence's `-` at the key's column as kubectl writes them.
fn render_entry(key: &str, value: &Value, column: usize) -> String {
    let pad = " ".repeat(column);
    let key = render_block(&Value::String(key.to_string()), 0);
    let key = key.trim_end();
    match value {
        Value::Mapping(_) => format!("{pad}{key}:\n{}", render_block(value, column + 2)),
        Value::Sequence(items) => {
            let items: String = items.iter().map(|i| render_item(i, column)).collect();
            format!("{pad}{key}:\n{items}")
        }
        _ => format!("{pad}{key}: {}", render_block(value, 0)),
    }
}

/// `- item` at `column`, the item's further lines under its first.
fn render_item(item: &Value, column: usize) -> String {
    let pad = " ".repeat(column);
    render_block(item, 0)
        .lines()
        .enumerate()
        .map(|(i, line)| match i {
            0 => format!("{pad}- {line}\n"),
            _ => format!("{pad}  {line}\n"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Step {
        Step::Key(k.to_string())
    }

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    const POD: &str = "\
# the web tier
kind: Pod
metadata:
  name: web   # its name
spec:
  containers:
  - name: web
    image: nginx   # pinned
    ports:
    - containerPort: 80
  # a comment before volumes
  volumes:
    - name: data
      emptyDir: {}

    - name: cache
      emptyDir: {}
  dnsPolicy: ClusterFirst
";

    #[test]
    fn an_entry_is_added_at_the_end_of_its_mapping_and_nothing_else_moves() {
        let root = parse(POD).unwrap();
        let out = add_entry(
            POD,
            &root,
            &[key("metadata")],
            "annotations",
            &yaml("a: 'true'"),
        )
        .unwrap();
        assert_eq!(
            out,
            POD.replace(
                "  name: web   # its name\n",
                "  name: web   # its name\n  annotations:\n    a: 'true'\n"
            )
        );
        let out = add_entry(POD, &root, &[key("spec")], "hostname", &yaml("w")).unwrap();
        assert!(
            out.ends_with("  dnsPolicy: ClusterFirst\n  hostname: w\n"),
            "{out}"
        );
    }

    #[test]
    fn an_item_goes_where_asked_at_the_sequence_s_own_column() {
        let root = parse(POD).unwrap();
        let item = yaml("name: proxy\nargs: [a]");
        let containers = [key("spec"), key("containers")];
        let out = insert_item(POD, &root, &containers, 0, &item).unwrap();
        assert!(
            out.contains("  containers:\n  - name: proxy\n    args:\n    - a\n  - name: web\n"),
            "{out}"
        );
        let volumes = [key("spec"), key("volumes")];
        let out = insert_item(POD, &root, &volumes, 2, &item).unwrap();
        assert!(
            out.contains(
                "      emptyDir: {}\n    - name: proxy\n      args:\n      - a\n  dnsPolicy"
            ),
            "{out}"
        );
        assert_eq!(yaml(&out)["spec"]["volumes"][2], item);
        // Between two items: after the first's lines, the blank line
        // staying with the second.
        let out = insert_item(POD, &root, &volumes, 1, &item).unwrap();
        assert_eq!(
            out,
            POD.replace(
                "      emptyDir: {}\n\n    - name: cache",
                "      emptyDir: {}\n    - name: proxy\n      args:\n      - a\n\n    - name: cache"
            )
        );
    }

    #[test]
    fn an_item_is_replaced_or_removed_with_its_lines_only() {
        let root = parse(POD).unwrap();
        let volumes = [key("spec"), key("volumes")];
        let out = remove_item(POD, &root, &volumes, 0).unwrap();
        assert_eq!(
            out,
            POD.replace("    - name: data\n      emptyDir: {}\n", "")
        );
        let out = remove_item(POD, &root, &volumes, 1).unwrap();
        assert_eq!(
            out,
            POD.replace("\n    - name: cache\n      emptyDir: {}\n", "\n")
        );
        let out = replace_item(POD, &root, &volumes, 0, &yaml("name: other")).unwrap();
        assert_eq!(
            out,
            POD.replace(
                "    - name: data\n      emptyDir: {}\n",
                "    - name: other\n"
            )
        );
    }

    #[test]
    fn an_entry_is_removed_with_its_value_but_not_the_comment_before_the_next() {
        let root = parse(POD).unwrap();
        let out = remove_entry(POD, &root, &[key("spec")], "containers").unwrap();
        assert!(
            out.contains("spec:\n  # a comment before volumes\n  volumes:"),
            "{out}"
        );
        let out = remove_entry(POD, &root, &[key("spec")], "dnsPolicy").unwrap();
        assert!(out.ends_with("      emptyDir: {}\n"), "{out}");
    }

    #[test]
    fn an_entry_s_value_is_replaced_where_it_stands() {
        let text = "probe:\n  httpGet:\n    port: 80   # the app\n    path: /h\n  # period\n  periodSeconds: 5\nnext: {a: 1}\n";
        let root = parse(text).unwrap();
        let get = [key("probe"), key("httpGet")];
        let out = replace_entry(text, &root, &get, "port", &yaml("4191")).unwrap();
        assert_eq!(
            out,
            text.replace("    port: 80   # the app\n", "    port: 4191\n")
        );
        let out = replace_entry(text, &root, &get, "path", &yaml("/x")).unwrap();
        assert_eq!(out, text.replace("path: /h", "path: /x"));
        // A flow value becomes a block one; the comment after it stays.
        let out = replace_entry(text, &root, &[], "next", &yaml("{a: 2}")).unwrap();
        assert!(
            out.ends_with("  periodSeconds: 5\nnext:\n  a: 2\n"),
            "{out}"
        );
        let out = replace_entry(text, &root, &[key("probe")], "httpGet", &yaml("port: 1"));
        assert!(out
            .unwrap()
            .starts_with("probe:\n  httpGet:\n    port: 1\n  # period\n"),);
        assert!(replace_entry(text, &root, &get, "host", &yaml("h")).is_none());
    }

    #[test]
    fn flow_collections_and_multibyte_text_are_located_right() {
        let text = "kind: Pod # é\nmetadata: {name: wéb}\nspec:\n  containers: []\n  volumes:\n  - {name: a}\n";
        let root = parse(text).unwrap();
        assert!(root.get(&[key("metadata")]).unwrap().flow);
        assert!(root.get(&[key("spec"), key("containers")]).unwrap().flow);
        assert!(!root.get(&[key("spec"), key("volumes")]).unwrap().flow);
        assert!(!root.get(&[key("spec")]).unwrap().flow);
        // Flow collections are not edited as text.
        assert!(add_entry(text, &root, &[key("metadata")], "x", &yaml("1")).is_none());
        let volumes = [key("spec"), key("volumes")];
        let out = insert_item(text, &root, &volumes, 1, &yaml("name: b")).unwrap();
        assert!(out.ends_with("  - {name: a}\n  - name: b\n"), "{out}");
    }

    #[test]
    fn nothing_to_edit_in_comments_or_broken_text() {
        assert!(parse("# only a comment\n").is_none());
        assert!(parse("a: b\n  c: d\n").is_none());
    }
}
