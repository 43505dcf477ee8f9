//! Finds where a key path (`services.orders.routes[1].split[0]`) sits in a
//! YAML text, so that problems found after deserializing still point at a
//! line and column. serde_yaml keeps no positions once a value is built.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

enum Node {
    Scalar,
    Map(Vec<(String, Position, Node)>),
    Seq(Vec<(Position, Node)>),
}

/// A collection being built: the node, a map's key awaiting its value,
/// and where the collection starts.
type Open = (Node, Option<(String, Position)>, Position);

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    root: Option<(Position, Node)>,
}

impl Builder {
    fn push_value(&mut self, at: Position, node: Node, scalar: Option<String>) {
        match self.stack.last_mut() {
            None => self.root = Some((at, node)),
            Some((Node::Map(entries), pending, _)) => match pending.take() {
                Some((key, key_at)) => entries.push((key, key_at, node)),
                None => *pending = Some((scalar.unwrap_or_default(), at)),
            },
            Some((Node::Seq(items), _, _)) => items.push((at, node)),
            Some((Node::Scalar, _, _)) => unreachable!("scalars hold nothing"),
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let at = Position {
            line: mark.line(),
            column: mark.col() + 1,
        };
        match event {
            Event::Scalar(value, ..) => self.push_value(at, Node::Scalar, Some(value)),
            Event::Alias(_) => self.push_value(at, Node::Scalar, None),
            Event::MappingStart(..) => self.stack.push((Node::Map(Vec::new()), None, at)),
            Event::SequenceStart(..) => self.stack.push((Node::Seq(Vec::new()), None, at)),
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some((node, _, start)) = self.stack.pop() {
                    self.push_value(start, node, None);
                }
            }
            _ => {}
        }
    }
}

/// The position of the deepest part of `path` found in `text`: the key of a
/// map entry, or the start of a sequence item. `None` when the text does not
/// parse or the path's first step is missing.
pub fn locate(text: &str, path: &[Segment]) -> Option<Position> {
    let mut builder = Builder::default();
    Parser::new_from_str(text).load(&mut builder, false).ok()?;
    let (mut best, mut node) = builder.root.as_ref().map(|(_, node)| (None, node))?;
    for segment in path {
        let next = match (segment, node) {
            (Segment::Key(k), Node::Map(entries)) => entries
                .iter()
                .find(|(key, ..)| key == k)
                .map(|(_, at, n)| (*at, n)),
            (Segment::Index(i), Node::Seq(items)) => items.get(*i).map(|(at, n)| (*at, n)),
            _ => None,
        };
        match next {
            Some((at, n)) => {
                best = Some(at);
                node = n;
            }
            None => break,
        }
    }
    best
}

/// A key given twice in one map of `text`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuplicateKey {
    /// The path of the repeated key, e.g. `services.orders`.
    pub path: Vec<Segment>,
    pub first: Position,
    pub again: Position,
}

/// Every key that appears twice in one map. YAML forbids it, but serde
/// keeps the last value of a map it reads into a `BTreeMap` and says
/// nothing, so a second `orders:` would silently replace the first.
pub fn duplicate_keys(text: &str) -> Vec<DuplicateKey> {
    let mut builder = Builder::default();
    if Parser::new_from_str(text)
        .load(&mut builder, false)
        .is_err()
    {
        return Vec::new();
    }
    let mut found = Vec::new();
    if let Some((_, root)) = &builder.root {
        find_duplicates(root, &mut Vec::new(), &mut found);
    }
    found
}

fn find_duplicates(node: &Node, path: &mut Vec<Segment>, found: &mut Vec<DuplicateKey>) {
    match node {
        Node::Scalar => {}
        Node::Map(entries) => {
            for (i, (key, at, child)) in entries.iter().enumerate() {
                path.push(Segment::Key(key.clone()));
                if let Some((_, first, _)) = entries[..i].iter().find(|(k, ..)| k == key) {
                    found.push(DuplicateKey {
                        path: path.clone(),
                        first: *first,
                        again: *at,
                    });
                }
                find_duplicates(child, path, found);
                path.pop();
            }
        }
        Node::Seq(items) => {
            for (i, (_, child)) in items.iter().enumerate() {
                path.push(Segment::Index(i));
                find_duplicates(child, path, found);
                path.pop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
services:
  orders:
    routes:
      - name: a
      - name: b
        split:
          - service: nowhere
";

    fn key(k: &str) -> Segment {
        Segment::Key(k.into())
    }

    #[test]
    fn finds_a_nested_key() {
        let path = [
            key("services"),
            key("orders"),
            key("routes"),
            Segment::Index(1),
            key("split"),
            Segment::Index(0),
            key("service"),
        ];
        assert_eq!(
            locate(TEXT, &path),
            Some(Position {
                line: 7,
                column: 13
            })
        );
    }

    #[test]
    fn stops_at_the_deepest_part_that_exists() {
        let path = [key("services"), key("orders"), key("timeout")];
        assert_eq!(locate(TEXT, &path), Some(Position { line: 2, column: 3 }));
    }
}
