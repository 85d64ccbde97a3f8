//! What can go wrong talking to the API. Messages never contain the API key: text that came from
//! the server is scrubbed of it too, in case a proxy or a broken server echoes headers back.

use std::time::Duration;

/// An API call that failed (after any retries).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 401 or 403: the key is wrong, revoked, or lacks permission. Never retried.
    #[error(
        "the API key was rejected (HTTP {status}{})",
        code_suffix(error_code, msg)
    )]
    Unauthorized {
        status: u16,
        error_code: String,
        msg: String,
    },
    /// 404: the resource does not exist (for an operator: deleted, or never on this account).
    #[error("not found (HTTP 404{})", code_suffix(error_code, msg))]
    NotFound { error_code: String, msg: String },
    /// Any other error status, with ngrok's error JSON when the body had one.
    #[error(
        "the API answered HTTP {status}{}{}",
        code_suffix(error_code, msg),
        operation_suffix(operation_id)
    )]
    Api {
        status: u16,
        error_code: String,
        msg: String,
        operation_id: String,
    },
    /// No answer within the configured timeout.
    #[error("the API did not answer within {0:?}")]
    Timeout(Duration),
    /// Connection, TLS or protocol failure, or a misconfigured client.
    #[error("cannot reach the API: {0}")]
    Transport(String),
    /// The answer was not the JSON we expected (or its pagination was broken).
    #[error("unexpected answer from the API: {0}")]
    Decode(String),
    /// The request could not be made as configured (bad URL, unusable CA, bad key characters).
    #[error("invalid API client settings: {0}")]
    Invalid(String),
}

impl ApiError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::NotFound { .. })
    }

    pub fn is_unauthorized(&self) -> bool {
        matches!(self, ApiError::Unauthorized { .. })
    }

    /// ngrok's `ERR_NGROK_…` code, when the server sent one.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            ApiError::Unauthorized { error_code, .. }
            | ApiError::NotFound { error_code, .. }
            | ApiError::Api { error_code, .. }
                if !error_code.is_empty() =>
            {
                Some(error_code)
            }
            _ => None,
        }
    }
}

fn code_suffix(code: &str, msg: &str) -> String {
    match (code.is_empty(), msg.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!(", {code}"),
        (true, false) => format!(": {msg}"),
        (false, false) => format!(", {code}: {msg}"),
    }
}

fn operation_suffix(operation_id: &str) -> String {
    if operation_id.is_empty() {
        String::new()
    } else {
        format!(" (operation {operation_id})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_code_and_operation() {
        let e = ApiError::Unauthorized {
            status: 401,
            error_code: "ERR_NGROK_205".into(),
            msg: "bad key".into(),
        };
        assert_eq!(
            e.to_string(),
            "the API key was rejected (HTTP 401, ERR_NGROK_205: bad key)"
        );
        let e = ApiError::Api {
            status: 400,
            error_code: "ERR_NGROK_233".into(),
            msg: "page size".into(),
            operation_id: "op_1".into(),
        };
        assert_eq!(
            e.to_string(),
            "the API answered HTTP 400, ERR_NGROK_233: page size (operation op_1)"
        );
        let e = ApiError::NotFound {
            error_code: String::new(),
            msg: String::new(),
        };
        assert_eq!(e.to_string(), "not found (HTTP 404)");
    }
}
