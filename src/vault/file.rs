//! The `file` backend: a private TOML file mapping user -> provider -> token.
//!
//! ```toml
//! [users."auth0|123"]
//! github = "ghp_..."
//! google = "ya29..."
//! ```
//! The file must not be readable or writable by group or others (`chmod 600`); the gate refuses
//! to start otherwise, and refuses each fetch if the mode is loosened later. It is read again on
//! every fetch, so edits apply without a restart.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use super::{Provider, Secret, TokenFuture, Vault, VaultError, deserialize_opt_secret, sanitize};

/// Tokens from a 0600 TOML file.
#[derive(Debug)]
pub struct FileVault {
    path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VaultFile {
    #[serde(default)]
    users: BTreeMap<String, UserTokens>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserTokens {
    #[serde(default, deserialize_with = "deserialize_opt_secret")]
    github: Option<Secret>,
    #[serde(default, deserialize_with = "deserialize_opt_secret")]
    google: Option<Secret>,
}

impl FileVault {
    /// Checks that `path` exists, is private and parses; the gate does not start otherwise.
    pub fn open(path: PathBuf) -> Result<FileVault, VaultError> {
        read_private_toml::<VaultFile>(&path)?;
        Ok(FileVault { path })
    }

    async fn fetch(&self, user: &str, provider: Provider) -> Result<Secret, VaultError> {
        let path = self.path.clone();
        let file: VaultFile = read_private_toml_async(path).await?;
        let not_found = |why: String| VaultError::NotFound {
            user: user.to_string(),
            provider,
            why,
        };
        let Some(tokens) = file.users.get(user) else {
            return Err(not_found(format!(
                "{} has no [users.{user:?}] table",
                self.path.display()
            )));
        };
        let token = match provider {
            Provider::Github => &tokens.github,
            Provider::Google => &tokens.google,
        };
        match token {
            Some(t) if !t.is_empty() => Ok(t.clone()),
            _ => Err(not_found(format!(
                "{} has no {} key for this user",
                self.path.display(),
                provider.name()
            ))),
        }
    }
}

impl Vault for FileVault {
    fn token<'a>(&'a self, user: &'a str, provider: Provider) -> TokenFuture<'a> {
        Box::pin(self.fetch(user, provider))
    }
}

/// Refuses a file that group or others may read or write (as for the CA key).
pub fn check_private(path: &Path) -> Result<(), VaultError> {
    let mode = std::fs::metadata(path)
        .map_err(|e| io_error(path, &e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(VaultError::Permissions {
            path: path.into(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

/// Reads and parses a private TOML file. Parse errors name the line and never quote the file.
pub(crate) fn read_private_toml<T: DeserializeOwned>(path: &Path) -> Result<T, VaultError> {
    check_private(path)?;
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| io_error(path, &e))?);
    let text = std::str::from_utf8(&bytes).map_err(|_| VaultError::File {
        path: path.into(),
        message: "not UTF-8 text".into(),
    })?;
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text.get(..s.start).unwrap_or(text).matches('\n').count() + 1);
        let at = line.map(|l| format!("line {l}: ")).unwrap_or_default();
        VaultError::File {
            path: path.into(),
            message: format!("{at}{}", sanitize(e.message(), &[], 160)),
        }
    })
}

/// [`read_private_toml`] off the async workers.
pub(crate) async fn read_private_toml_async<T: DeserializeOwned + Send + 'static>(
    path: PathBuf,
) -> Result<T, VaultError> {
    let shown = path.clone();
    tokio::task::spawn_blocking(move || read_private_toml(&path))
        .await
        .map_err(|e| VaultError::File {
            path: shown,
            message: format!("reading was interrupted: {e}"),
        })?
}

fn io_error(path: &Path, e: &std::io::Error) -> VaultError {
    VaultError::File {
        path: path.into(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    use super::*;

    fn write(name: &str, text: &str, mode: u32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "agentgate-vault-file-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vault.toml");
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[tokio::test]
    async fn tokens_by_user_and_provider() {
        let path = write(
            "ok",
            "[users.\"auth0|1\"]\ngithub = \"ghp_one\"\n[users.\"auth0|2\"]\ngoogle = \"ya29.two\"\n",
            0o600,
        );
        let vault = FileVault::open(path.clone()).unwrap();
        let t = vault.token("auth0|1", Provider::Github).await.unwrap();
        assert_eq!(t.expose(), "ghp_one");
        let t = vault.token("auth0|2", Provider::Google).await.unwrap();
        assert_eq!(t.expose(), "ya29.two");
        let e = vault.token("auth0|2", Provider::Github).await.unwrap_err();
        assert!(matches!(e, VaultError::NotFound { .. }), "{e}");
        let e = vault.token("auth0|3", Provider::Github).await.unwrap_err();
        assert!(e.to_string().contains("auth0|3"), "{e}");
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[tokio::test]
    async fn a_file_others_can_read_is_refused_at_open_and_at_fetch() {
        let path = write("perm", "[users.u]\ngithub = \"ghp_x\"\n", 0o644);
        let e = FileVault::open(path.clone()).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("644"), "{e}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let vault = FileVault::open(path.clone()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let e = vault.token("u", Provider::Github).await.unwrap_err();
        assert!(
            matches!(e, VaultError::Permissions { mode: 0o640, .. }),
            "{e}"
        );
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn parse_errors_name_the_line_but_never_quote_a_token() {
        let path = write(
            "bad",
            "[users.u]\ngithub = \"ghp_abcdefghijklmnopqrstuvwxyz0123456789\"\ngitlab = 5\n",
            0o600,
        );
        let e = FileVault::open(path.clone()).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("gitlab"), "{e}");
        assert!(!e.contains("ghp_"), "{e}");
        let path2 = write(
            "badtype",
            "[users.u]\ngithub = 12345\ngoogle = \"ya29.a0AfH6SMBx3kz9Qw8rT5uV7yZ1bC4dE6fG8hJ0kL2\"\n",
            0o600,
        );
        let e = FileVault::open(path2.clone()).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains("ya29"), "{e}");
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
        fs::remove_dir_all(path2.parent().unwrap()).unwrap();
    }
}
