//! Unix: the log line is the report (stderr reaches systemd's journal or the terminal).

/// Nothing to add to the log line on Unix; kept so callers are the same on both systems.
pub fn report(text: &str) {
    tracing::debug!(
        chars = text.len(),
        "(the Windows Application event log would get this report too)"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn reporting_is_harmless_without_an_event_log() {
        super::report("pyfcgi cannot start: test");
    }
}
