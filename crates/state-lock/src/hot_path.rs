//! Helpers that keep the per-call path of the locks free of formatting: a lock's name is
//! added to an error message only once there is an error (numbers go through `itoa`, on
//! the stack).

use state_core::StateError;

/// `error` with the lock's name added: the request itself carries a fixed description, so
/// that no message is formatted for calls that succeed. The kind and whether the outcome is
/// unknown stay as they were; the original error is kept as the source.
pub(crate) fn name_error(error: StateError, name: &str) -> StateError {
    let named = StateError::new(error.kind(), format!("lock `{name}`: {}", error.message()));
    let named = if error.outcome_unknown() {
        named.with_outcome_unknown()
    } else {
        named
    };
    named.with_source(error)
}

/// What a lock call is doing, for error messages (`acquiring lock `jobs``): formatted
/// only when an error needs it.
#[derive(Clone, Copy)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) struct Doing<'a> {
    action: &'static str,
    name: &'a str,
}

#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
impl<'a> Doing<'a> {
    /// `action` is a verb (`"acquiring"`), `name` the lock's.
    pub(crate) fn new(action: &'static str, name: &'a str) -> Doing<'a> {
        Doing { action, name }
    }
}

impl std::fmt::Display for Doing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} lock `{}`", self.action, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use state_core::ErrorKind;

    #[test]
    fn doing_reads_as_before() {
        assert_eq!(
            Doing::new("acquiring", "jobs").to_string(),
            "acquiring lock `jobs`"
        );
    }

    #[test]
    fn a_named_error_keeps_kind_and_outcome() {
        let lost = StateError::new(ErrorKind::Connection, "reply lost").with_outcome_unknown();
        let named = name_error(lost, "jobs");
        assert_eq!(named.kind(), ErrorKind::Connection);
        assert!(named.outcome_unknown());
        assert!(named.message().contains("`jobs`"), "{named}");
        assert!(named.message().contains("reply lost"), "{named}");
        let plain = name_error(StateError::new(ErrorKind::Backend, "x"), "n");
        assert!(!plain.outcome_unknown());
    }
}
