//! Connector errors carry a classification and a retry directive; the supervisor's restart
//! policy is a pure function of them ([`ConnectorError::retryable`]).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The user's configuration is wrong: retrying cannot help.
    Config,
    /// An outside system (database, broker, the stream server) failed or is unreachable.
    External,
    /// A bug in a connector or the runtime.
    Internal,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Config => "config",
            ErrorKind::External => "external",
            ErrorKind::Internal => "internal",
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{kind} error: {message}")]
pub struct ConnectorError {
    pub kind: ErrorKind,
    pub message: String,
    /// Whether the supervisor should restart the task.
    pub retry: bool,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ConnectorError {
    pub fn config(message: impl Into<String>) -> Self {
        ConnectorError {
            kind: ErrorKind::Config,
            message: message.into(),
            retry: false,
            source: None,
        }
    }

    pub fn external(message: impl Into<String>) -> Self {
        ConnectorError {
            kind: ErrorKind::External,
            message: message.into(),
            retry: true,
            source: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ConnectorError {
            kind: ErrorKind::Internal,
            message: message.into(),
            retry: false,
            source: None,
        }
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    pub fn retryable(&self) -> bool {
        self.retry
    }
}
