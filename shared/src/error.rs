//! The JSON body of every non-2xx API response.

use serde::{Deserialize, Serialize};

/// Error body: `{"error": "...", "code": 400}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ApiError {
    /// Human-readable, one line.
    pub error: String,
    /// The HTTP status code, repeated for clients that lose it.
    pub code: u16,
}
