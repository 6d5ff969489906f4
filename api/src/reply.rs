//! Small bodies that several endpoints and tools answer with.

use serde::{Deserialize, Serialize};

/// Every error answer of the agent, the console's local API and keel-vmm's control API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

/// An answer that says nothing but success: `{}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmptyReply {}

/// Answer to `DELETE` of an image: what was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedReply {
    pub deleted: String,
}

/// keelctl's one-line outcome in JSON output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageReply {
    pub message: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn json_is_what_the_hand_written_bodies_were() {
        let cases = [
            (
                serde_json::to_string(&ErrorReply {
                    error: "no \"x\"".into(),
                })
                .unwrap(),
                serde_json::json!({"error": "no \"x\""}).to_string(),
            ),
            (
                serde_json::to_string(&EmptyReply {}).unwrap(),
                serde_json::json!({}).to_string(),
            ),
            (
                serde_json::to_string(&DeletedReply {
                    deleted: "disk/base".into(),
                })
                .unwrap(),
                serde_json::json!({"deleted": "disk/base"}).to_string(),
            ),
            (
                serde_json::to_string(&MessageReply {
                    message: "ok".into(),
                })
                .unwrap(),
                serde_json::json!({"message": "ok"}).to_string(),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }
}
