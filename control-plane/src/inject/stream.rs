//! Splits a YAML stream into its documents without losing a byte: each
//! piece keeps its `---` line, its comments and its line ends, so that the
//! pieces joined are the stream again.

/// The documents of `stream`, each from its `---` line (if any) up to the
/// next one.
pub fn documents(stream: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut at = 0;
    for line in stream.split_inclusive('\n') {
        if at > start && is_document_start(line) {
            pieces.push(&stream[start..at]);
            start = at;
        }
        at += line.len();
    }
    if start < stream.len() || pieces.is_empty() {
        pieces.push(&stream[start..]);
    }
    pieces
}

/// `---` at the start of a line, alone or followed by a space, a tab or a
/// comment: a marker, not a scalar such as `----`.
fn is_document_start(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n', '#']))
}

#[cfg(test)]
mod tests {
    use super::documents;

    #[test]
    fn documents_split_at_markers_and_join_back_to_the_stream() {
        let stream = "# head\na: 1\n---\nb: 2\n--- # third\nc: |\n  ---x\n----: 4\n---\n";
        let pieces = documents(stream);
        assert_eq!(
            pieces,
            [
                "# head\na: 1\n",
                "---\nb: 2\n",
                "--- # third\nc: |\n  ---x\n----: 4\n",
                "---\n"
            ]
        );
        assert_eq!(pieces.concat(), stream);
        assert_eq!(documents(""), [""]);
        assert_eq!(documents("---\na: 1"), ["---\na: 1"]);
    }
}
