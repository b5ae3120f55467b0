//! Reading a value inside a JSON document by path.

use serde_json::Value;

/// The value at `path` (`/a/0/b`: object keys and array indexes), like
/// `Value::pointer` without its `~0`/`~1` escapes: `pointer` allocates two strings per
/// path segment to unescape it, and the gateway reads a dozen paths of every call on and
/// off the request path. Every path in this code base is a literal without `~`.
pub fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(value);
    }
    let mut current = value;
    for segment in path.strip_prefix('/')?.split('/') {
        current = match current {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn at_reads_what_pointer_reads() {
        let doc = json!({"a": {"b": [1, {"c": "x"}], "": 2}, "n": null});
        for path in [
            "",
            "/a",
            "/a/b",
            "/a/b/0",
            "/a/b/1/c",
            "/a/b/2",
            "/a/b/x",
            "/a/",
            "/n",
            "/z",
            "/a/b/1/c/d",
        ] {
            assert_eq!(at(&doc, path), doc.pointer(path), "{path}");
        }
        assert_eq!(at(&doc, ""), Some(&doc));
        assert_eq!(at(&doc, "a"), None, "a path starts with a slash");
    }
}
