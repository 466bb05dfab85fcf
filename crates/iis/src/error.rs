//! The IIS crate's error type.

use std::path::PathBuf;

/// A web.config that cannot be used, or a registration that cannot be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IisError {
    /// The file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not well-formed XML.
    #[error("{path} is not valid XML: {message}")]
    Xml {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// The XML is well-formed but not a usable web.config.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}
