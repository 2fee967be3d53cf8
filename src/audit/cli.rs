//! `agentgate audit export` and `agentgate audit verify` on a data directory whose gate is not
//! running: they open its sled store directly. A running gate holds the store's lock; then
//! these return [`AuditError::Locked`] and the caller asks the gate's API instead.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::export::{self, Broken, Filter, VerifyReport};
use super::{AuditError, Record, store};

/// The sled database inside the data directory (the gate opens the same one).
pub const STATE_DIR: &str = "state";

/// Where the store of `data_dir` is.
pub fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STATE_DIR)
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// JSON lines written.
    pub lines: u64,
    /// Records that could not be read (skipped); `agentgate audit verify` says more.
    pub unreadable: Vec<Broken>,
}

/// Writes the records of `data_dir`'s log that `filter` keeps to `out`, one JSON line each.
pub fn export(
    data_dir: &Path,
    filter: &Filter,
    out: &mut dyn Write,
) -> Result<ExportSummary, AuditError> {
    let sink = store::open_path(&store_path(data_dir))?;
    write_lines(export::export(&sink, filter), out)
}

/// Checks the hash chain of `data_dir`'s log.
pub fn verify(data_dir: &Path) -> Result<VerifyReport, AuditError> {
    let sink = store::open_path(&store_path(data_dir))?;
    Ok(export::verify(&sink))
}

/// Writes each record as its stored body, byte for byte, and a newline: the SHA-256 of a line
/// is the record's hash and the `prev` of the record after it, so the export can be checked
/// without the gate. A record that cannot be read is listed in the summary and skipped; a
/// store that cannot be read stops the export.
pub fn write_lines(
    records: impl Iterator<Item = Result<Record, AuditError>>,
    out: &mut dyn Write,
) -> Result<ExportSummary, AuditError> {
    let mut w = BufWriter::new(out);
    let mut summary = ExportSummary::default();
    let output = |e: std::io::Error| AuditError::Output {
        kind: e.kind(),
        message: e.to_string(),
    };
    for r in records {
        match r {
            Ok(r) => {
                w.write_all(r.line.as_bytes()).map_err(output)?;
                w.write_all(b"\n").map_err(output)?;
                summary.lines += 1;
            }
            Err(AuditError::Corrupt { seq, why }) => summary.unreadable.push(Broken { seq, why }),
            Err(e) => return Err(e),
        }
    }
    w.flush().map_err(output)?;
    Ok(summary)
}
