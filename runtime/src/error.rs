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
    /// One record's content is refused (a value a column cannot hold, a constraint, a message
    /// that does not decode): retrying cannot help, but other records can go on. What
    /// `errors.tolerance=all` turns into a dead letter ([`crate::tolerance`]).
    Data,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Config => "config",
            ErrorKind::External => "external",
            ErrorKind::Internal => "internal",
            ErrorKind::Data => "data",
        })
    }
}

/// A connector's failure: its class, what it was doing (`message`), and the error that caused
/// it (`source`, kept as an error, not flattened into text). `Display` shows the whole chain
/// (`external error: reading the connector's output: broken pipe`), since that is what task
/// states, logs and API responses show; `Error::source` gives the cause itself.
#[derive(Debug)]
pub struct ConnectorError {
    pub kind: ErrorKind,
    pub message: String,
    /// Whether the supervisor should restart the task.
    pub retry: bool,
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// One problem with a config, at a JSON path such as `rate` or `shape.bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A cause at least this long that its parent's text holds anywhere counts as shown by it.
const QUOTED_CAUSE_MIN: usize = 24;

impl fmt::Display for ConnectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error: {}", self.kind, self.message)?;
        // Each cause once. A `ConnectorError` cause shows its own chain, so the walk ends there.
        // Other errors that show their cause (tokio-postgres's, `io::Error` wrapping one) end
        // their text with it, or quote it inside (mysql_async's driver errors): a cause whose
        // text ends its parent's, or a long one the parent holds, is not repeated. A short cause
        // ("timed out") the parent merely mentions somewhere else is shown.
        let mut cause = self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static));
        let mut parent = self.message.clone();
        while let Some(e) = cause {
            let text = e.to_string();
            let shown = parent.ends_with(&text) || (text.len() >= QUOTED_CAUSE_MIN && parent.contains(&text));
            if !text.is_empty() && !shown {
                write!(f, ": {text}")?;
            }
            if e.is::<ConnectorError>() {
                break;
            }
            parent = text;
            cause = e.source();
        }
        Ok(())
    }
}

impl std::error::Error for ConnectorError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
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

    /// A record's content is refused ([`ErrorKind::Data`]).
    pub fn data(message: impl Into<String>) -> Self {
        ConnectorError {
            kind: ErrorKind::Data,
            message: message.into(),
            retry: false,
            source: None,
        }
    }

    /// Keeps `source` as the cause (shown after the message, reachable by `Error::source`).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Keeps an already boxed error as the cause (`wasmtime::Error::into_boxed_dyn_error`).
    pub fn with_boxed_source(mut self, source: Box<dyn std::error::Error + Send + Sync>) -> Self {
        self.source = Some(source);
        self
    }

    /// The message and every cause, as one line (what `Display` shows after the class).
    pub fn full_message(&self) -> String {
        let shown = self.to_string();
        let prefix = format!("{} error: ", self.kind);
        shown.strip_prefix(&prefix).map(str::to_owned).unwrap_or(shown)
    }

    pub fn retryable(&self) -> bool {
        self.retry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cause stays an error (for `Error::source`) and shows after the message.
    #[test]
    fn the_cause_is_kept_and_shown() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let e = ConnectorError::external("reading the connector's output").with_source(io);
        assert_eq!(
            e.to_string(),
            "external error: reading the connector's output: broken pipe"
        );
        assert_eq!(e.full_message(), "reading the connector's output: broken pipe");
        let cause = std::error::Error::source(&e).expect("a source");
        assert_eq!(
            cause.downcast_ref::<std::io::Error>().map(|e| e.kind()),
            Some(std::io::ErrorKind::BrokenPipe)
        );
        // Wrapped again, the whole chain shows.
        let outer = ConnectorError::internal("attempt").with_source(e);
        assert_eq!(
            outer.to_string(),
            "internal error: attempt: external error: reading the connector's output: broken pipe"
        );
        assert!(ConnectorError::config("user").source.is_none(), "no cause unless given");
    }

    /// An error that shows its own cause at the end of its text.
    #[derive(Debug)]
    struct Wrapping(std::io::Error);

    impl fmt::Display for Wrapping {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "db error: {}", self.0)
        }
    }

    impl std::error::Error for Wrapping {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// A cause that its parent already shows at the end is not repeated; a short cause that
    /// the parent only mentions elsewhere still shows.
    #[test]
    fn each_cause_shows_once_and_none_is_hidden() {
        let io = || std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
        let e = ConnectorError::external("query").with_source(Wrapping(io()));
        assert_eq!(e.to_string(), "external error: query: db error: timed out");
        let e = ConnectorError::external("timed out waiting for the lock, retrying").with_source(io());
        assert_eq!(
            e.to_string(),
            "external error: timed out waiting for the lock, retrying: timed out"
        );
        // A long cause its parent quotes inside its text is not repeated; an empty one adds
        // nothing.
        #[derive(Debug)]
        struct Quoting(std::io::Error);
        impl fmt::Display for Quoting {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "Driver error: `{}'", self.0)
            }
        }
        impl std::error::Error for Quoting {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let long = || std::io::Error::other("the server closed the connection unexpectedly");
        let e = ConnectorError::external("query").with_source(Quoting(long()));
        assert_eq!(
            e.to_string(),
            "external error: query: Driver error: `the server closed the connection unexpectedly'"
        );
        let e = ConnectorError::external("query").with_source(std::io::Error::other(""));
        assert_eq!(e.to_string(), "external error: query");
        // A ConnectorError cause shows its chain itself, once.
        let inner = ConnectorError::external("connect").with_source(Wrapping(io()));
        let outer = ConnectorError::internal("attempt").with_source(inner);
        assert_eq!(
            outer.to_string(),
            "internal error: attempt: external error: connect: db error: timed out"
        );
    }
}
