//! Load errors: `file:line:col: message`, in the user's terms.

use std::fmt;

use super::ast::{Source, Span};

/// One reason a policy set could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub file: String,
    /// 1-based; 0 when the error is about the set or a file as a whole.
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl LoadError {
    /// An error at a span of one of `sources`.
    pub fn at(sources: &[Source], span: Span, message: impl Into<String>) -> LoadError {
        let (file, (line, col)) = match sources.get(span.file) {
            Some(src) => (src.name.clone(), src.line_col(span.start)),
            None => (String::from("<policy>"), (0, 0)),
        };
        LoadError {
            file,
            line,
            col,
            message: message.into(),
        }
    }

    /// An error about a whole file (its size, its encoding) or the whole set.
    pub fn whole(file: impl Into<String>, message: impl Into<String>) -> LoadError {
        LoadError {
            file: file.into(),
            line: 0,
            col: 0,
            message: message.into(),
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.col, self.message
            )
        }
    }
}

/// Every error of a failed load, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}
