//! Request smuggling on HTTP/1: a request that carries both
//! `Content-Length` and `Transfer-Encoding` is refused with 400. hyper
//! settles such a request itself (it drops the length, trusts the chunked
//! coding and closes the connection afterwards, as RFC 9112 §6.1 allows)
//! without telling the service, so each connection's bytes are followed
//! here, head by head, and the service is told which request it was.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::MAX_HEADER_BYTES;

/// hyper's default limit on the number of headers of one request.
const MAX_HEADERS: usize = 100;
/// No head has been found ambiguous.
const NONE: u64 = u64::MAX;

/// Put in a request's extensions when its head had both framing headers.
#[derive(Clone, Copy, Debug)]
pub struct AmbiguousFraming;

/// What the reader found, for the connection's service.
#[derive(Debug)]
pub struct Verdicts {
    /// The index of the first ambiguous request head on the connection.
    first_ambiguous: AtomicU64,
    /// Requests handed to the service so far.
    served: AtomicU64,
}

impl Verdicts {
    /// Called for each request as the service receives it. HTTP/1 serves a
    /// connection's requests one at a time and in order, and the reader
    /// has seen a head before hyper parses it, so counting calls is enough.
    pub fn next_is_ambiguous(&self) -> bool {
        let index = self.served.fetch_add(1, Ordering::Relaxed);
        index == self.first_ambiguous.load(Ordering::Acquire)
    }
}

/// Follows the framing of the requests read from one connection.
#[derive(Debug)]
pub struct Framing {
    state: State,
    /// A head, chunk-size line or trailer section that arrived in parts.
    partial: Vec<u8>,
    heads: u64,
    verdicts: Arc<Verdicts>,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Head,
    /// Body bytes to pass over, then what comes next.
    Skip {
        left: u64,
        chunked: bool,
    },
    ChunkSize,
    Trailers,
    /// HTTP/2, or bytes hyper refuses (and then closes the connection):
    /// nothing more to follow.
    Done,
}

enum Step {
    Partial,
    /// The section took this many bytes; the next state.
    Complete(usize, State),
}

impl Framing {
    pub fn new() -> (Self, Arc<Verdicts>) {
        let verdicts = Arc::new(Verdicts {
            first_ambiguous: AtomicU64::new(NONE),
            served: AtomicU64::new(0),
        });
        let framing = Self {
            state: State::Head,
            partial: Vec::new(),
            heads: 0,
            verdicts: verdicts.clone(),
        };
        (framing, verdicts)
    }

    /// Whether a request head has begun to arrive and is not whole yet: a
    /// client that sends its head in parts. A head whole in one read never
    /// is.
    pub fn head_in_parts(&self) -> bool {
        matches!(self.state, State::Head) && !self.partial.is_empty()
    }

    /// Follows `data`, the next bytes read from the connection.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Done => return,
                State::Skip { left, chunked } => {
                    let n = left.min(data.len() as u64);
                    data = &data[n as usize..];
                    self.state = match (left - n, chunked) {
                        (0, false) => State::Head,
                        (0, true) => State::ChunkSize,
                        (left, chunked) => State::Skip { left, chunked },
                    };
                }
                State::Head | State::ChunkSize | State::Trailers => {
                    // The common case, a section whole in one read, is
                    // parsed in place; only a split one is copied.
                    let before = self.partial.len();
                    let step = if before == 0 {
                        self.parse(data)
                    } else {
                        self.partial.extend_from_slice(data);
                        self.parse(&self.partial)
                    };
                    match step {
                        Step::Complete(len, next) => {
                            if matches!(self.state, State::Head) {
                                self.heads += 1;
                            }
                            // A section that arrived in parts began in
                            // `partial`; the rest of it was in `data`.
                            data = data.get(len.saturating_sub(before)..).unwrap_or_default();
                            if before > 0 {
                                self.partial = Vec::new();
                            }
                            self.state = next;
                        }
                        Step::Partial if before + data.len() > MAX_HEADER_BYTES => {
                            // hyper answers 431 and closes.
                            self.partial = Vec::new();
                            self.state = State::Done;
                            return;
                        }
                        Step::Partial => {
                            if before == 0 {
                                self.partial.extend_from_slice(data);
                            }
                            return;
                        }
                    }
                }
            }
        }
    }

    fn parse(&self, input: &[u8]) -> Step {
        match self.state {
            State::Head => self.head(input),
            State::ChunkSize => match httparse::parse_chunk_size(input) {
                Ok(httparse::Status::Complete((len, 0))) => Step::Complete(len, State::Trailers),
                Ok(httparse::Status::Complete((len, size))) => Step::Complete(
                    len,
                    State::Skip {
                        // The chunk's data and the CRLF after it.
                        left: size.saturating_add(2),
                        chunked: true,
                    },
                ),
                Ok(httparse::Status::Partial) => Step::Partial,
                Err(_) => Step::Complete(0, State::Done),
            },
            State::Trailers => {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                match httparse::parse_headers(input, &mut headers) {
                    Ok(httparse::Status::Complete((len, _))) => Step::Complete(len, State::Head),
                    Ok(httparse::Status::Partial) => Step::Partial,
                    Err(_) => Step::Complete(0, State::Done),
                }
            }
            State::Skip { .. } | State::Done => Step::Complete(0, self.state),
        }
    }

    fn head(&self, input: &[u8]) -> Step {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(input) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Step::Partial,
            // Not HTTP/1 (the HTTP/2 preface fails here), or malformed.
            Err(_) => return Step::Complete(0, State::Done),
        };
        let named = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
        };
        let next = match (named("content-length"), named("transfer-encoding")) {
            (Some(_), Some(_)) => {
                let _ = self.verdicts.first_ambiguous.compare_exchange(
                    NONE,
                    self.heads,
                    Ordering::Release,
                    Ordering::Relaxed,
                );
                // hyper closes the connection after such a request.
                State::Done
            }
            (None, Some(_)) => State::ChunkSize,
            (Some(length), None) => match std::str::from_utf8(length.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                Some(0) => State::Head,
                Some(left) => State::Skip {
                    left,
                    chunked: false,
                },
                None => State::Done,
            },
            (None, None) => State::Head,
        };
        Step::Complete(len, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ambiguous(reads: &[&[u8]], requests: usize) -> Vec<bool> {
        let (mut framing, verdicts) = Framing::new();
        for read in reads {
            framing.feed(read);
        }
        (0..requests)
            .map(|_| verdicts.next_is_ambiguous())
            .collect()
    }

    #[test]
    fn both_framing_headers_mark_that_request() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n";
        assert_eq!(ambiguous(&[head], 1), [true]);
    }

    #[test]
    fn requests_after_bodies_are_found_on_a_kept_alive_connection() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
            POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n\
            GET /c HTTP/1.1\r\n\r\n\
            POST /d HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(ambiguous(&[stream], 5), [false, false, false, true, false]);
        // The same bytes split at every point are followed the same way.
        for at in 1..stream.len() {
            let (a, b) = stream.split_at(at);
            assert_eq!(
                ambiguous(&[a, b], 5),
                [false, false, false, true, false],
                "split at {at}"
            );
        }
    }

    #[test]
    fn a_body_that_looks_like_a_head_is_not_one() {
        let body = b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut stream =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        stream.extend_from_slice(body);
        assert_eq!(ambiguous(&[&stream], 2), [false, false]);
    }

    #[test]
    fn http2_is_left_alone() {
        let preface =
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n";
        assert_eq!(ambiguous(&[preface], 3), [false, false, false]);
    }

    /// Pieces of HTTP/1 requests, so that generated streams are mostly
    /// requests and reach every state; raw bytes for the rest.
    #[derive(Clone, Copy, Debug, bolero::TypeGenerator)]
    enum Token {
        Piece(u8),
        Byte(u8),
    }

    const PIECES: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\n",
        b"POST /a HTTP/1.1\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"Host: a\r\n",
        b"Content-Length: ",
        b"content-length: 3\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"transfer-encoding: x\r\n",
        b"\r\n",
        b"0",
        b"3",
        b"a",
        b";x=y",
        b"abc",
        b"0\r\n\r\n",
        b"3\r\nabc\r\n",
    ];

    fn stream(tokens: &[Token]) -> Vec<u8> {
        let mut out = Vec::new();
        for t in tokens {
            match *t {
                Token::Piece(i) => out.extend_from_slice(PIECES[usize::from(i) % PIECES.len()]),
                Token::Byte(b) => out.push(b),
            }
        }
        // A head larger than hyper takes ends the connection (431) however
        // it arrives, but only one split into reads is refused here; under
        // the limit, where hyper serves requests, the reads must not matter.
        out.truncate(MAX_HEADER_BYTES);
        out
    }

    /// What following `reads` found: the first ambiguous head and the
    /// number of heads.
    fn follow<'a>(reads: impl IntoIterator<Item = &'a [u8]>) -> (u64, u64) {
        let (mut framing, verdicts) = Framing::new();
        for read in reads {
            framing.feed(read);
        }
        let first = verdicts.first_ambiguous.load(Ordering::Relaxed);
        (first, framing.heads)
    }

    #[test]
    fn any_bytes_in_any_reads_are_followed_the_same_way() {
        // A short random run here; `cargo bolero test` runs this target
        // under a coverage-guided fuzzer for as long as it is given
        // (docs/reliability.md).
        bolero::check!()
            .with_type::<(Vec<Token>, Vec<u16>)>()
            .with_test_time(std::time::Duration::from_millis(500))
            .for_each(|(tokens, cuts)| {
                let bytes = stream(tokens);
                let whole = follow([bytes.as_slice()]);
                if whole.0 != NONE {
                    assert!(whole.0 < whole.1, "an ambiguous head that was not counted");
                }
                let mut cuts: Vec<usize> = cuts
                    .iter()
                    .map(|c| usize::from(*c) % (bytes.len() + 1))
                    .collect();
                cuts.sort_unstable();
                let mut reads = Vec::new();
                let mut start = 0;
                for cut in cuts.into_iter().chain([bytes.len()]) {
                    reads.push(&bytes[start..cut]);
                    start = cut;
                }
                assert_eq!(
                    follow(reads),
                    whole,
                    "{:?}",
                    String::from_utf8_lossy(&bytes)
                );
                // One byte at a time, the most a slow client splits.
                assert_eq!(follow(bytes.chunks(1)), whole);
            });
    }
}
