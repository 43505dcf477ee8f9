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

    mod properties {
        //! The matching rules of docs/config.md under generated paths,
        //! methods and headers.

        use proptest::prelude::*;

        use super::*;

        /// Cases per property; `PROPTEST_CASES` in the environment runs
        /// as many as it says.
        fn config() -> ProptestConfig {
            match std::env::var_os("PROPTEST_CASES") {
                Some(_) => ProptestConfig::default(),
                None => ProptestConfig::with_cases(128),
            }
        }

        /// Paths from a small alphabet, so that one often starts with,
        /// or equals, another.
        fn path() -> impl Strategy<Value = String> {
            "/[ab/]{0,5}"
        }

        /// Characters a regex takes literally.
        fn literal_path() -> impl Strategy<Value = String> {
            "/[a-zA-Z0-9/_-]{0,12}"
        }

        fn method() -> impl Strategy<Value = Method> {
            prop::sample::select(vec![
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::DELETE,
            ])
        }

        fn quoted(s: &str) -> String {
            serde_yaml::to_string(s).unwrap().trim_end().to_string()
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn a_prefix_matches_exactly_the_paths_that_start_with_it(
                prefix in path(),
                suffix in "[ab/]{0,4}",
                other in path(),
                method in method(),
            ) {
                let none = http::HeaderMap::new();
                let m = matcher(&format!("path_prefix: {}", quoted(&prefix)));
                let longer = format!("{prefix}{suffix}");
                prop_assert!(m.matches(&method, &longer, &none));
                prop_assert_eq!(m.matches(&method, &other, &none), other.starts_with(&prefix));
            }

            #[test]
            fn a_path_matches_itself_only(path in path(), other in path()) {
                let none = http::HeaderMap::new();
                let m = matcher(&format!("path: {}", quoted(&path)));
                prop_assert!(m.matches(&Method::GET, &path, &none));
                prop_assert_eq!(m.matches(&Method::GET, &other, &none), other == path);
            }

            #[test]
            fn a_regex_matches_the_whole_path_only(
                literal in literal_path(),
                extra in "[a-z0-9/]{1,4}",
            ) {
                let none = http::HeaderMap::new();
                let m = matcher(&format!("path_regex: {}", quoted(&literal)));
                prop_assert!(m.matches(&Method::GET, &literal, &none));
                let longer = format!("{literal}{extra}");
                prop_assert!(!m.matches(&Method::GET, &longer, &none));
                let after = format!("{extra}{literal}");
                prop_assert!(!m.matches(&Method::GET, &after, &none));
                prop_assert!(!m.matches(&Method::GET, &literal[..literal.len() - 1], &none));
            }

            #[test]
            fn methods_listed_are_the_only_ones_matched(
                listed in prop::collection::vec(method(), 0..4),
                method in method(),
            ) {
                let names: Vec<&str> = listed.iter().map(Method::as_str).collect();
                let m = matcher(&format!("methods: [{}]", names.join(", ")));
                let want = listed.is_empty() || listed.contains(&method);
                prop_assert_eq!(m.matches(&method, "/", &http::HeaderMap::new()), want);
            }

            #[test]
            fn every_listed_header_must_carry_its_value(
                wanted in prop::collection::btree_map("x-[ab]", "[01]", 0..3),
                sent in prop::collection::vec(("x-[abc]", "[01]"), 0..5),
            ) {
                let conditions: Vec<String> = wanted.iter().map(|(k, v)| format!("{k}: '{v}'")).collect();
                let m = matcher(&format!("headers: {{ {} }}", conditions.join(", ")));
                let mut request = http::HeaderMap::new();
                for (k, v) in &sent {
                    request.append(
                        HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        HeaderValue::from_str(v).unwrap(),
                    );
                }
                // A header sent twice matches if either value does.
                let want = wanted.iter().all(|(k, v)| sent.iter().any(|s| (&s.0, &s.1) == (k, v)));
                prop_assert_eq!(m.matches(&Method::GET, "/", &request), want);
            }
        }
    }
}
