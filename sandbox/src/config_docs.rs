//! Configuration documents the sandbox serves to bindgate's REST config sources, so end-to-end
//! tests run a real HTTP(S) server that they change at run time.
//!
//! `PUT /sandbox/config_docs/{name}` stores the request body as the document (its
//! `Content-Type` is served with it; default `application/json`); `GET` of the same path
//! answers it with a strong `ETag` and honours `If-None-Match` with `304`; `DELETE` removes it
//! (later `GET`s answer `404`, a failing source). Every `GET` is recorded with its query string
//! and answer status: `GET /sandbox/config_docs/{name}/requests`.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
#[allow(clippy::disallowed_types)]
use std::sync::Mutex;

use serde::Serialize;

/// The largest document accepted by `PUT`.
pub const MAX_DOC: usize = 32 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct ConfigDocs {
    #[allow(clippy::disallowed_types)]
    docs: Mutex<HashMap<String, Doc>>,
}

#[derive(Debug, Default)]
struct Doc {
    body: Option<Vec<u8>>,
    content_type: String,
    etag: String,
    requests: Vec<DocRequest>,
}

/// One `GET` of a document, as recorded.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DocRequest {
    /// The raw query string (empty when there was none).
    pub query: String,
    pub if_none_match: Option<String>,
    pub status: u16,
}

/// What a `GET` answers.
pub enum Served {
    Body {
        body: Vec<u8>,
        content_type: String,
        etag: String,
    },
    NotModified {
        etag: String,
    },
    Missing,
}

impl ConfigDocs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Doc>> {
        self.docs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `body` as document `name`; returns its ETag.
    pub fn put(&self, name: &str, body: Vec<u8>, content_type: Option<&str>) -> String {
        let mut h = DefaultHasher::new();
        body.hash(&mut h);
        let etag = format!("\"{:016x}\"", h.finish());
        let mut docs = self.lock();
        let doc = docs.entry(name.to_owned()).or_default();
        doc.body = Some(body);
        doc.content_type = content_type.unwrap_or("application/json").to_owned();
        doc.etag = etag.clone();
        etag
    }

    /// Removes document `name` (its request log stays); false when there was none.
    pub fn delete(&self, name: &str) -> bool {
        self.lock()
            .get_mut(name)
            .and_then(|d| d.body.take())
            .is_some()
    }

    /// Answers a `GET` and records it.
    pub fn get(&self, name: &str, query: &str, if_none_match: Option<&str>) -> Served {
        let mut docs = self.lock();
        let doc = docs.entry(name.to_owned()).or_default();
        let served = match &doc.body {
            None => Served::Missing,
            Some(_) if if_none_match.is_some_and(|t| etag_matches(t, &doc.etag)) => {
                Served::NotModified {
                    etag: doc.etag.clone(),
                }
            }
            Some(body) => Served::Body {
                body: body.clone(),
                content_type: doc.content_type.clone(),
                etag: doc.etag.clone(),
            },
        };
        doc.requests.push(DocRequest {
            query: query.to_owned(),
            if_none_match: if_none_match.map(str::to_owned),
            status: match served {
                Served::Body { .. } => 200,
                Served::NotModified { .. } => 304,
                Served::Missing => 404,
            },
        });
        served
    }

    /// Every `GET` of document `name` so far.
    pub fn requests(&self, name: &str) -> Vec<DocRequest> {
        self.lock()
            .get(name)
            .map(|d| d.requests.clone())
            .unwrap_or_default()
    }
}

/// `If-None-Match`: `*`, or a list of tags one of which is the current one (weak tags compare
/// weakly, as RFC 9110 says for this header).
fn etag_matches(header: &str, current: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_is_served_then_not_modified_then_missing() {
        let docs = ConfigDocs::default();
        let tag = docs.put("a", b"{}".to_vec(), None);
        assert!(matches!(docs.get("a", "", None), Served::Body { ref etag, .. } if *etag == tag));
        assert!(matches!(
            docs.get("a", "version_info=1", Some(&tag)),
            Served::NotModified { .. }
        ));
        assert!(matches!(
            docs.get("a", "", Some("\"other\"")),
            Served::Body { .. }
        ));
        let tag2 = docs.put("a", b"{ }".to_vec(), Some("application/yaml"));
        assert_ne!(tag, tag2);
        assert!(
            matches!(docs.get("a", "", Some(&tag)), Served::Body { ref content_type, .. } if content_type == "application/yaml")
        );
        assert!(docs.delete("a"));
        assert!(matches!(docs.get("a", "", None), Served::Missing));
        let statuses: Vec<u16> = docs.requests("a").iter().map(|r| r.status).collect();
        assert_eq!(statuses, [200, 304, 200, 200, 404]);
        assert_eq!(docs.requests("a")[1].query, "version_info=1");
    }
}
