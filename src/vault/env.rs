//! The `env` backend: one token per provider from the environment, the same for every user.

use super::{Environment, Provider, TokenFuture, Vault, VaultError};

/// Reads `AGENTGATE_GITHUB_TOKEN` / `AGENTGATE_GOOGLE_TOKEN` at each fetch, so a changed
/// variable (in an embedding process) takes effect at once.
#[derive(Debug)]
pub struct EnvVault {
    env: Environment,
}

impl EnvVault {
    pub fn new(env: Environment) -> EnvVault {
        EnvVault { env }
    }
}

impl Vault for EnvVault {
    fn token<'a>(&'a self, user: &'a str, provider: Provider) -> TokenFuture<'a> {
        let found = self
            .env
            .secret(provider.env_var())
            .ok_or_else(|| VaultError::NotFound {
                user: user.to_string(),
                provider,
                why: format!(
                    "{} is not set (vault.backend = \"env\")",
                    provider.env_var()
                ),
            });
        Box::pin(std::future::ready(found))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[tokio::test]
    async fn reads_the_provider_variable_and_refuses_a_missing_or_empty_one() {
        let env = Environment::from_map(BTreeMap::from([
            ("AGENTGATE_GITHUB_TOKEN".into(), "ghp_fromenv".into()),
            ("AGENTGATE_GOOGLE_TOKEN".into(), String::new()),
        ]));
        let vault = EnvVault::new(env);
        let t = vault.token("auth0|1", Provider::Github).await.unwrap();
        assert_eq!(t.expose(), "ghp_fromenv");
        let e = vault.token("auth0|1", Provider::Google).await.unwrap_err();
        assert!(e.to_string().contains("AGENTGATE_GOOGLE_TOKEN"), "{e}");
    }
}
