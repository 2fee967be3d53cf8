//! `GET /api/policy`: the policy set in force, the last load's result and errors, the files in
//! the policy directory, and when the status last changed.
//!
//! The active set ([`Active`]) keeps the last load's result but not its time, so the dashboard
//! watches it ([`PolicyView::observe`], once a second from the feed's pump): when the set in
//! force or the load status changes, it notes the time and the feed announces a `policy`
//! event. A failed reload that fails again with exactly the same errors is not a change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::lock;
use crate::policy::{Active, LoadStatus, Program};

#[derive(Debug)]
pub struct PolicyView {
    active: Arc<Active>,
    dir: PathBuf,
    seen: Mutex<Seen>,
}

#[derive(Debug)]
struct Seen {
    /// Kept alive so that a new set can never be mistaken for it by address.
    program: Option<Arc<Program>>,
    status: LoadStatus,
    changed_ms: i64,
}

/// One `*.policy` file of the directory.
#[derive(Debug, Serialize)]
pub struct FileStatus {
    pub name: String,
    pub bytes: u64,
    pub modified_ms: Option<i64>,
    /// `in_force` (the set in force has this text), `changed` (it differs from the text in
    /// force), `not_loaded` (not part of the set in force), `removed` (in force, but gone from
    /// the directory).
    pub state: &'static str,
}

impl PolicyView {
    /// Watches `active`, loaded from `dir`; the state seen now dates from `now_ms`.
    pub fn new(active: Arc<Active>, dir: PathBuf, now_ms: i64) -> PolicyView {
        let seen = Seen {
            program: active.current(),
            status: active.status(),
            changed_ms: now_ms,
        };
        PolicyView {
            active,
            dir,
            seen: Mutex::new(seen),
        }
    }

    /// Notes a change of the set in force or of the load status; returns whether there was one.
    pub fn observe(&self, now_ms: i64) -> bool {
        let program = self.active.current();
        let status = self.active.status();
        let mut seen = lock(&self.seen);
        let same_program = match (&seen.program, &program) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if same_program && seen.status == status {
            return false;
        }
        *seen = Seen {
            program,
            status,
            changed_ms: now_ms,
        };
        true
    }

    /// The status as `GET /api/policy` shows it. Reads the directory: call it from a blocking
    /// thread.
    pub fn report(&self) -> serde_json::Value {
        let program = self.active.current();
        let status = self.active.status();
        let changed_ms = lock(&self.seen).changed_ms;
        let (state, errors) = match &status {
            LoadStatus::Never => ("never", Vec::new()),
            LoadStatus::Loaded { .. } => ("loaded", Vec::new()),
            LoadStatus::Failed(text) => ("failed", text.lines().map(str::to_string).collect()),
        };
        let active = program.as_ref().map(|p| {
            serde_json::json!({
                "files": p.sources.len(),
                "rules": p.rules.len(),
                "tests": p.tests.len(),
                "default": p.default.effect.to_string(),
            })
        });
        let rules: Vec<serde_json::Value> = program
            .as_ref()
            .map(|p| p.rules.iter().map(rule_json).collect())
            .unwrap_or_default();
        let (files, dir_error) = match list_files(&self.dir, program.as_deref()) {
            Ok(f) => (f, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        serde_json::json!({
            "dir": self.dir.display().to_string(),
            "status": state,
            "in_force": program.is_some(),
            "errors": errors,
            "active": active,
            "last_change_ms": changed_ms,
            "files": files,
            "dir_error": dir_error,
            "rules": rules,
        })
    }
}

fn rule_json(r: &crate::policy::check::CRule) -> serde_json::Value {
    serde_json::json!({
        "id": r.id.to_string(),
        "effect": r.effect.to_string(),
        "shadow": r.shadow,
        "on": r.patterns.iter().map(|p| p.text.to_string()).collect::<Vec<_>>(),
        "location": r.location.to_string(),
        "annotations": r.annotations.iter().map(|(k, v)| serde_json::json!({"name": k, "value": v})).collect::<Vec<_>>(),
    })
}

/// The `*.policy` files directly under `dir` (dot-files skipped, as the loader does), and
/// those of the set in force that are gone.
fn list_files(dir: &Path, program: Option<&Program>) -> Result<Vec<FileStatus>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let in_force = |path: &Path| {
        let name = path.display().to_string();
        program.and_then(|p| p.sources.iter().find(|s| s.name == name))
    };
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || path.extension().is_none_or(|e| e != "policy") {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let modified_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok());
        let state = match in_force(&path) {
            None => "not_loaded",
            Some(src) => {
                seen.push(src.name.clone());
                let same = meta.len() == src.text.len() as u64
                    && std::fs::read(&path).is_ok_and(|b| b == src.text.as_bytes());
                if same { "in_force" } else { "changed" }
            }
        };
        out.push(FileStatus {
            name,
            bytes: meta.len(),
            modified_ms,
            state,
        });
    }
    if let Some(p) = program {
        for s in p.sources.iter().filter(|s| !seen.contains(&s.name)) {
            out.push(FileStatus {
                name: Path::new(&s.name)
                    .file_name()
                    .map_or(s.name.clone(), |n| n.to_string_lossy().to_string()),
                bytes: s.text.len() as u64,
                modified_ms: None,
                state: "removed",
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::schema::Schema;

    #[test]
    fn the_report_names_files_rules_and_changes() {
        let dir =
            std::env::temp_dir().join(format!("agentgate-dash-policy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let text = "default block;\nallow \"reads\" on github.** when method == \"GET\";\n";
        std::fs::write(dir.join("a.policy"), text).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a policy").unwrap();
        let schema = Schema::builtin();
        let active = Arc::new(Active::new());
        let view = PolicyView::new(active.clone(), dir.clone(), 1);
        assert!(!view.observe(2));
        crate::policy_files::reload(&dir, &schema, &active).unwrap();
        assert!(view.observe(3));
        assert!(!view.observe(4));
        let r = view.report();
        assert_eq!(r["status"], "loaded");
        assert_eq!(r["last_change_ms"], 3);
        assert_eq!(r["active"]["rules"], 1);
        assert_eq!(r["rules"][0]["id"], "reads");
        assert_eq!(r["rules"][0]["effect"], "allow");
        assert_eq!(r["files"].as_array().unwrap().len(), 1);
        assert_eq!(r["files"][0]["state"], "in_force");
        std::fs::write(dir.join("a.policy"), "default nonsense").unwrap();
        let _ = crate::policy_files::reload(&dir, &schema, &active);
        assert!(view.observe(5));
        let r = view.report();
        assert_eq!(r["status"], "failed");
        assert_eq!(r["in_force"], true, "the previous set stays");
        assert!(!r["errors"].as_array().unwrap().is_empty());
        assert_eq!(r["files"][0]["state"], "changed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
