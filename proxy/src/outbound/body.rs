//! The caller's request body across the tries of one request: sent once,
//! or kept (up to `MAX_REPLAY_BYTES`) so that a retry can send it again.

use std::time::Duration;

use http_body::Body as _;
use hyper::body::Incoming;

use crate::http::replay::{ReplayBody, MAX_REPLAY_BYTES};
use crate::http::{boxed, empty, from_caller, Body};

/// What later tries can have of the body once the first has it.
pub enum RequestBody {
    /// Nothing to send: every try sends nothing.
    Empty,
    /// Given to the first try whole; no retry is possible.
    Once,
    /// Copied as it goes, for retries.
    Replay(ReplayBody),
}

impl RequestBody {
    /// The body of the first try, and what later tries can have: a copy,
    /// unless the body is known to be larger than a replay may keep. Any
    /// request may have to go again, if only because its first endpoint
    /// could not be reached.
    pub fn first_try(body: Incoming, idle_limit: Duration) -> (Self, Body) {
        if body.is_end_stream() {
            return (RequestBody::Empty, empty());
        }
        if body.size_hint().lower() > MAX_REPLAY_BYTES as u64 {
            return (RequestBody::Once, from_caller(body, idle_limit));
        }
        let replay = ReplayBody::new(from_caller(body, idle_limit));
        // The copy exists: the length was just found to fit. Were it not,
        // the body would go once, uncopied.
        match replay.try_clone() {
            Some(first) => (RequestBody::Replay(replay), boxed(first)),
            None => (RequestBody::Once, boxed(replay)),
        }
    }

    /// The body of the next try; `None` once the body cannot be sent again.
    /// Taking it supersedes the previous try's copy.
    pub fn next_try(&mut self) -> Option<Body> {
        match self {
            RequestBody::Empty => Some(empty()),
            RequestBody::Once => None,
            RequestBody::Replay(r) => r.try_clone().map(boxed),
        }
    }

    /// Whether a next try could have the body (a copy may still fail).
    pub fn can_replay(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Once => false,
            RequestBody::Replay(r) => r.can_replay(),
        }
    }
}
