//! Deadlines that travel. A request may arrive with the time it has left:
//! gRPC's `grpc-timeout` (`100m`, `5S`, ...) or `remora-deadline`
//! (milliseconds). Its deadline is the earlier of that and the route's
//! `timeout`; each hop forwards the time still left (less what it spent)
//! in both headers, so the next proxy and the app can give up when the
//! caller has.

use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};

/// Milliseconds the request has left, sent to every next hop.
pub const REMORA_DEADLINE: &str = "remora-deadline";
/// gRPC's own: an integer of at most 8 digits and a unit.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// When a request must be answered by, as its caller said.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// The deadline the request's headers give, counted from `arrived`:
    /// the earlier of `grpc-timeout` and `remora-deadline`. A value that
    /// does not parse is ignored, as gRPC servers do.
    pub fn of_request(headers: &HeaderMap, arrived: Instant) -> Option<Deadline> {
        let grpc = headers
            .get(GRPC_TIMEOUT)
            .and_then(|v| grpc_timeout(v.as_bytes()));
        let remora = headers
            .get(REMORA_DEADLINE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis);
        let left = match (grpc, remora) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(Deadline(arrived + left))
    }

    /// The earlier of `self` and a `timeout` from `start`.
    pub fn within(
        deadline: Option<Deadline>,
        timeout: Option<Duration>,
        start: Instant,
    ) -> Option<Deadline> {
        let by_timeout = timeout.map(|t| Deadline(start + t));
        match (deadline, by_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn left(self, now: Instant) -> Duration {
        self.0.saturating_duration_since(now)
    }

    pub fn has_passed(self, now: Instant) -> bool {
        self.0 <= now
    }

    /// Tells the next hop the time left at `now`: `remora-deadline`
    /// always, and `grpc-timeout` in place of the caller's, if it sent one.
    pub fn forward(self, headers: &mut HeaderMap, now: Instant) {
        let left = self.left(now);
        headers.insert(REMORA_DEADLINE, HeaderValue::from(left.as_millis() as u64));
        if headers.contains_key(GRPC_TIMEOUT) {
            headers.insert(GRPC_TIMEOUT, grpc_timeout_value(left));
        }
    }
}

/// `grpc-timeout`: 1 to 8 ASCII digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`).
fn grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The time left as `grpc-timeout`, in milliseconds while they fit in
/// eight digits (over a day), else in seconds.
fn grpc_timeout_value(left: Duration) -> HeaderValue {
    let millis = left.as_millis();
    let text = if millis < 100_000_000 {
        format!("{millis}m")
    } else {
        format!("{}S", left.as_secs().min(99_999_999))
    };
    HeaderValue::from_str(&text).expect("digits and a unit")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn grpc_timeout_has_every_unit_and_at_most_eight_digits() {
        let cases = [
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("3S", Some(Duration::from_secs(3))),
            ("250m", Some(Duration::from_millis(250))),
            ("7u", Some(Duration::from_micros(7))),
            ("9n", Some(Duration::from_nanos(9))),
            ("99999999m", Some(Duration::from_millis(99_999_999))),
            ("123456789m", None),
            ("m", None),
            ("10", None),
            ("10x", None),
            ("-1S", None),
        ];
        for (text, want) in cases {
            assert_eq!(grpc_timeout(text.as_bytes()), want, "{text}");
        }
    }

    #[test]
    fn the_earlier_of_the_headers_and_the_timeout_wins() {
        let now = Instant::now();
        let both = headers(&[(GRPC_TIMEOUT, "2S"), (REMORA_DEADLINE, "500")]);
        let d = Deadline::of_request(&both, now).unwrap();
        assert_eq!(d.left(now), Duration::from_millis(500));
        assert_eq!(
            Deadline::of_request(&headers(&[(REMORA_DEADLINE, "soon")]), now),
            None
        );
        let within = Deadline::within(Some(d), Some(Duration::from_millis(100)), now).unwrap();
        assert_eq!(within.left(now), Duration::from_millis(100));
        assert_eq!(Deadline::within(Some(d), None, now), Some(d));
        assert!(
            Deadline::of_request(&headers(&[(REMORA_DEADLINE, "0")]), now)
                .unwrap()
                .has_passed(now)
        );
    }

    #[test]
    fn the_time_left_is_forwarded_in_both_headers() {
        let now = Instant::now();
        let d = Deadline(now + Duration::from_millis(1500));
        let mut h = headers(&[(GRPC_TIMEOUT, "5S")]);
        d.forward(&mut h, now + Duration::from_millis(200));
        assert_eq!(h[REMORA_DEADLINE], "1300");
        assert_eq!(h[GRPC_TIMEOUT], "1300m");
        let mut h = HeaderMap::new();
        d.forward(&mut h, now);
        assert_eq!(h[REMORA_DEADLINE], "1500");
        assert!(
            h.get(GRPC_TIMEOUT).is_none(),
            "not added where gRPC did not send it"
        );
        assert_eq!(grpc_timeout_value(Duration::from_secs(200_000)), "200000S");
    }
}
