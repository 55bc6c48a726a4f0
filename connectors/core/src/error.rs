//! Error classes: what the caller does next.
//!
//! Every connector maps its engine's error codes to one [`ErrorClass`] in one place (a
//! table per engine), so the retry policy never guesses.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry with capped exponential backoff: connection loss, deadlock, server restarting.
    Transient,
    /// Tied to specific events (constraint, value out of range): dead-letter them, go on.
    Event,
    /// The pipeline cannot continue until a human acts; the message names the fix.
    Fatal,
}

#[derive(Debug, thiserror::Error)]
pub struct ConnectorError {
    pub class: ErrorClass,
    pub message: String,
    /// Engine error code where there is one (SQLSTATE, MySQL error number).
    pub code: Option<String>,
    /// The engine's code is in no classification table: retried as `Transient`, but the
    /// engine gives up after `retry.unknown_max_attempts` such failures in a row.
    pub unclassified: bool,
    /// Not a failure: the source's set of tables changed (a table created under a
    /// wildcard, a partition attached). The engine starts the run again at once, which
    /// picks the change up (publication, copy of the new rows), without backoff.
    pub restart: bool,
}

impl fmt::Display for ConnectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{} [{code}]", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl ConnectorError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        ConnectorError { class, message: message.into(), code: None, unclassified: false, restart: false }
    }
    /// An error classified by an engine's table; `None` (a code the table does not know)
    /// is retried as transient and marked [`ConnectorError::unclassified`].
    pub fn classified(class: Option<ErrorClass>, message: impl Into<String>) -> Self {
        let mut e = Self::new(class.unwrap_or(ErrorClass::Transient), message);
        e.unclassified = class.is_none();
        e
    }
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Transient, message)
    }
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Fatal, message)
    }
    pub fn event(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Event, message)
    }
    /// See [`ConnectorError::restart`].
    pub fn restart(message: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorClass::Transient, message);
        e.restart = true;
        e
    }
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }
    /// Prefixes the message with context (what was being done, where).
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
    pub fn is_fatal(&self) -> bool {
        self.class == ErrorClass::Fatal
    }
}
