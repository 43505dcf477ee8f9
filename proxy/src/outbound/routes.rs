//! Route matching: a service's routes in order, first match wins. Matchers
//! are compiled once per config so matching a request allocates nothing.

use http::{HeaderName, HeaderValue, Method};
use remora_api::{PathRegex, RouteMatch};

pub enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
    Regex(PathRegex),
}

pub struct Matcher {
    path: PathMatch,
    headers: Vec<(HeaderName, HeaderValue)>,
    methods: Vec<Method>,
}

impl Matcher {
    /// Everything: the implicit route of a service that declares none.
    pub fn any() -> Self {
        Self {
            path: PathMatch::Any,
            headers: Vec::new(),
            methods: Vec::new(),
        }
    }

    pub fn compile(m: &RouteMatch) -> Self {
        let path = if let Some(p) = &m.path {
            PathMatch::Exact(p.clone())
        } else if let Some(p) = &m.path_prefix {
            PathMatch::Prefix(p.clone())
        } else if let Some(r) = &m.path_regex {
            PathMatch::Regex(r.clone())
        } else {
            PathMatch::Any
        };
        // Names and methods were checked when the config was read, so a
        // failure here can only be a value with bytes HTTP forbids.
        let headers = m
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((
                    HeaderName::from_bytes(name.as_str().as_bytes()).ok()?,
                    HeaderValue::from_str(value).ok()?,
                ))
            })
            .collect();
        let methods = m
            .methods
            .iter()
            .filter_map(|x| Method::from_bytes(x.as_str().as_bytes()).ok())
            .collect();
        Self {
            path,
            headers,
            methods,
        }
    }

    pub fn matches(&self, method: &Method, path: &str, headers: &http::HeaderMap) -> bool {
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Regex(r) => r.is_match(path),
        };
        path_ok
            && (self.methods.is_empty() || self.methods.contains(method))
            && self
                .headers
                .iter()
                .all(|(name, want)| headers.get_all(name).iter().any(|v| v == want))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(yaml: &str) -> Matcher {
        Matcher::compile(&serde_yaml::from_str::<RouteMatch>(yaml).unwrap())
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn path_forms() {
        let none = http::HeaderMap::new();
        let exact = matcher("path: /a");
        assert!(exact.matches(&Method::GET, "/a", &none));
        assert!(!exact.matches(&Method::GET, "/a/b", &none));
        let prefix = matcher("path_prefix: /api/");
        assert!(prefix.matches(&Method::GET, "/api/x", &none));
        assert!(!prefix.matches(&Method::GET, "/apix", &none));
        let regex = matcher("path_regex: '/users/[0-9]+'");
        assert!(regex.matches(&Method::GET, "/users/7", &none));
        assert!(!regex.matches(&Method::GET, "/users/7/x", &none));
    }

    #[test]
    fn headers_and_methods_must_all_hold() {
        let m = matcher("{ path_prefix: /, headers: { x-canary: '1' }, methods: [GET, HEAD] }");
        assert!(m.matches(&Method::GET, "/", &headers(&[("x-canary", "1")])));
        assert!(!m.matches(&Method::POST, "/", &headers(&[("x-canary", "1")])));
        assert!(!m.matches(&Method::GET, "/", &headers(&[("x-canary", "0")])));
        assert!(!m.matches(&Method::GET, "/", &http::HeaderMap::new()));
    }
}
