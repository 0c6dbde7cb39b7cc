//! The result an application reports: named checks, each pass/fail with a detail, plus
//! free-form values. Serialized as one JSON line with `"event": "result"`.

use serde::Serialize;

/// One assertion made by the application.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What was checked ("id", "scratch", ...).
    pub name: String,
    /// Whether it held.
    pub pass: bool,
    /// What was seen.
    pub detail: String,
}

/// What an application run found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Always "result".
    pub event: &'static str,
    /// The scenario name.
    pub scenario: String,
    /// "vfio" or "vfio-user".
    pub transport: String,
    /// True when every check passed.
    pub pass: bool,
    /// The checks, in order.
    pub checks: Vec<Check>,
    /// Measured values for the host to cross-check.
    pub values: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    /// An empty, passing report.
    pub fn new(scenario: &str, transport: &str) -> Self {
        Report {
            event: "result",
            scenario: scenario.into(),
            transport: transport.into(),
            pass: true,
            checks: vec![],
            values: Default::default(),
        }
    }

    /// Records a check.
    pub fn check(&mut self, name: &str, pass: bool, detail: impl Into<String>) -> bool {
        self.pass &= pass;
        self.checks.push(Check { name: name.into(), pass, detail: detail.into() });
        pass
    }

    /// Records a count check: at least `want`, or any at all when `want` is None.
    pub fn check_count(
        &mut self,
        name: &str,
        got: u64,
        want: Option<u64>,
        detail: impl Into<String>,
    ) -> bool {
        let pass = want.map_or(got > 0, |n| got >= n);
        self.check(name, pass, detail)
    }

    /// Records a failure that stopped the run.
    pub fn fail(&mut self, name: &str, err: impl std::fmt::Display) {
        self.check(name, false, err.to_string());
    }

    /// Records a value.
    pub fn value(&mut self, key: &str, v: impl Into<serde_json::Value>) {
        self.values.insert(key.into(), v.into());
    }

    /// The report as one JSON line.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"event\":\"result\",\"pass\":false,\"error\":\"{e}\"}}"))
    }
}

/// Prints a progress event (`{"event": ...}`) as one JSON line and flushes it: the host
/// watches the guest's output for these (a scenario's source starts on "ready").
pub fn announce(event: serde_json::Value) {
    println!("{event}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_checks() {
        let mut r = Report::new("t", "vfio-user");
        assert!(r.check_count("any", 1, None, ""));
        assert!(r.check_count("enough", 5, Some(5), ""));
        assert!(r.pass);
        assert!(!r.check_count("none", 0, None, ""));
        assert!(!r.pass);
        assert!(!r.check_count("short", 4, Some(5), ""));
    }
}
