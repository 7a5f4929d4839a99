//! The token dance: a user's access token from the client's cache, else the one the
//! vault holds, else one minted from the refresh token under the user's refresh
//! lease (the protocol is in [`super::tokens`]). The HTTP side of a refresh (sending
//! the token request, with retries) stays with the client, behind [`TokenEndpoint`].

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::error::{BaanxError, ConsentReason, VaultError};
use super::model::{TokenGrant, salvage_refresh_token};
use super::tokens::{
    CachedToken, Checkout, CheckoutAsk, Grant, LeasedRefresh, StoredAccess, TokenCache, TokenVault, usable_for,
};
use crate::domain::{Clock, UserId};

/// The HTTP side of a refresh, which the client provides.
pub(super) trait TokenEndpoint: Sync {
    /// Presents `refresh_token` of `user` to the token endpoint, retrying as the
    /// client does; each attempt goes out only while `alive()` (the lease is ours).
    /// The answer's status and body, read in full.
    async fn present(
        &self,
        user: &UserId,
        refresh_token: &str,
        alive: &(dyn Fn() -> bool + Sync),
    ) -> Result<(StatusCode, Vec<u8>), BaanxError>;

    /// A refresh minted a token (counted in the client's stats).
    fn minted(&self);
}

/// Where the client gets a user's access token: its cache, its vault, its lease.
pub(super) struct AccessTokens {
    /// How long a user's refresh lease lasts without renewal.
    pub refresh_lease: Duration,
    /// Access tokens are refreshed this long before they expire.
    pub refresh_margin: Duration,
    /// Names this client's refresh leases in the vault: unique per process.
    pub owner: String,
    /// Decides when a cached access token is stale.
    pub clock: Arc<dyn Clock>,
    /// Where users' tokens live.
    pub vault: Arc<dyn TokenVault>,
    /// The access tokens in memory, and the single-flight locks.
    pub cache: TokenCache,
}

impl AccessTokens {
    /// The user's access token: the cached one while fresh (and not the one a 401
    /// just refused, `stale`), else the one another process (or an earlier run)
    /// stored while it is usable, else a new one minted from the refresh token under
    /// the user's refresh lease (see [`super::tokens`]). Runs under the user's
    /// single-flight lock.
    pub async fn access_token(
        &self,
        user: &UserId,
        stale: Option<u64>,
        http: &impl TokenEndpoint,
    ) -> Result<(Zeroizing<String>, u64), BaanxError> {
        let slot = self.cache.slot(user);
        let mut cached = slot.lock().await;
        // the token a 401 refused, so that the vault's copy of it is not taken again
        let mut refused: Option<Zeroizing<String>> = None;
        if let Some(c) = cached.as_ref() {
            if Some(c.generation) == stale {
                refused = Some(c.token.clone());
            } else if c.fresh_until > self.clock.now() {
                return Ok((c.token.clone(), c.generation));
            }
        }
        *cached = None;
        let mut force = refused.is_some();
        let waiting_since = Instant::now();
        let mut pause = Duration::from_millis(20);
        let mut newer_tokens = 0u32;
        loop {
            let now = self.clock.now();
            let lease_until = now + chrono::Duration::from_std(self.refresh_lease).unwrap_or_default();
            let found = self
                .vault
                .checkout(user, CheckoutAsk { owner: &self.owner, now, lease_until, force })
                .await
                .map_err(vault_err(user, "check out tokens"))?;
            let minted = match found {
                Checkout::Fresh(a) if refused.as_ref().is_some_and(|r| r.as_str() == a.token.as_str()) => {
                    force = true;
                    continue;
                }
                Checkout::Fresh(a) => a,
                Checkout::NoToken => {
                    return Err(BaanxError::ConsentRequired {
                        user_id: user.to_string(),
                        reason: ConsentReason::NoToken,
                    });
                }
                Checkout::Busy { until } => {
                    // another process is refreshing this user: take its result
                    if waiting_since.elapsed() > self.refresh_lease * 3 {
                        return Err(BaanxError::Vault {
                            user_id: user.to_string(),
                            action: "wait for another process's refresh",
                            source: "the user's refresh lease stayed taken".into(),
                        });
                    }
                    force = false;
                    let left = (until - now).to_std().unwrap_or_default();
                    tokio::time::sleep(left.min(pause).max(Duration::from_millis(1))).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                    continue;
                }
                Checkout::Leased(leased) => match self.refresh_under_lease(user, &leased, http).await? {
                    Some(minted) => minted,
                    None => {
                        // refused, but a newer token was stored meanwhile: use that
                        newer_tokens += 1;
                        if newer_tokens > 3 {
                            return Err(BaanxError::ConsentRequired {
                                user_id: user.to_string(),
                                reason: ConsentReason::InvalidGrant,
                            });
                        }
                        force = false;
                        continue;
                    }
                },
            };
            let generation = self.cache.next_generation();
            *cached = Some(CachedToken { token: minted.token.clone(), fresh_until: minted.fresh_until, generation });
            return Ok((minted.token, generation));
        }
    }

    /// One refresh, made while this process holds the user's refresh lease (renewed
    /// while the call lasts). `None` when the token was refused but a newer one had
    /// been stored meanwhile by another process (consent is not lost then).
    async fn refresh_under_lease(
        &self,
        user: &UserId,
        leased: &LeasedRefresh,
        http: &impl TokenEndpoint,
    ) -> Result<Option<StoredAccess>, BaanxError> {
        let lease = self.refresh_lease;
        // When the lease was last known to be ours, on the monotonic clock: a process
        // frozen past its lease (a paused VM, SIGSTOP) must not present the refresh
        // token on waking, since another process may have rotated it meanwhile.
        let held_since = std::sync::Mutex::new(Instant::now());
        let lease_alive = || held_since.lock().map(|t| t.elapsed() < lease.mul_f64(0.8)).unwrap_or(false);
        let call = http.present(user, &leased.token, &lease_alive);
        tokio::pin!(call);
        let mut renew = tokio::time::interval_at(Instant::now() + lease / 3, lease / 3);
        let answer = loop {
            tokio::select! {
                answer = &mut call => break answer,
                _ = renew.tick() => {
                    let until = self.clock.now() + chrono::Duration::from_std(lease).unwrap_or_default();
                    match self.vault.renew(user, &self.owner, until).await {
                        Ok(true) => {
                            if let Ok(mut t) = held_since.lock() {
                                *t = Instant::now();
                            }
                        }
                        Ok(false) => tracing::warn!("the refresh lease was lost while the token call went on"),
                        Err(e) => tracing::warn!(error = %e, "could not renew the refresh lease"),
                    }
                }
            }
        };
        let release = || async {
            if let Err(e) = self.vault.release(user, &self.owner).await {
                tracing::debug!(error = %e, "could not release the refresh lease; it will run out");
            }
        };
        let grant = match answer {
            Ok((status, body)) => match TokenGrant::parse(status, &body) {
                Ok(grant) => grant,
                Err(e) => {
                    // the server has rotated: keep the new refresh token if it can be read
                    if let Some(rotated) = salvage_refresh_token(&body) {
                        let now = self.clock.now();
                        let keep = Grant { refresh: Some(&rotated), access: None, fresh_until: now, expires_at: now };
                        self.vault
                            .store_grant(user, &self.owner, &keep)
                            .await
                            .map_err(vault_err(user, "store rotated refresh token"))?;
                    } else {
                        release().await;
                    }
                    return Err(e);
                }
            },
            Err(e @ BaanxError::ConsentRequired { .. }) => {
                let marked = self
                    .vault
                    .refused(user, &self.owner, leased.version, self.clock.now())
                    .await
                    .map_err(vault_err(user, "mark consent required"))?;
                if !marked {
                    tracing::debug!("refresh token refused, but a newer one is stored: using it");
                    return Ok(None);
                }
                tracing::warn!("refresh token refused (invalid_grant): the user must consent again");
                return Err(e);
            }
            Err(e) => {
                release().await;
                return Err(e);
            }
        };
        http.minted();
        let now = self.clock.now();
        let fresh_until =
            now + chrono::Duration::from_std(usable_for(grant.expires_in, self.refresh_margin)).unwrap_or_default();
        let expires_at = now + chrono::Duration::from_std(grant.expires_in).unwrap_or_default();
        // Invariant 4: the rotated refresh token is durable before the new access
        // token is used; the old one is already dead on the server.
        let stored = Grant {
            refresh: grant.refresh_token.as_deref().map(|t| t.as_str()),
            access: Some(grant.access_token.as_str()),
            fresh_until,
            expires_at,
        };
        self.vault
            .store_grant(user, &self.owner, &stored)
            .await
            .map_err(vault_err(user, "store rotated refresh token"))?;
        tracing::trace!(expires_in_s = grant.expires_in.as_secs(), "minted access token");
        Ok(Some(StoredAccess { token: grant.access_token, fresh_until }))
    }
}

/// Wraps a vault failure with the user and what was being done.
fn vault_err(user: &UserId, action: &'static str) -> impl FnOnce(VaultError) -> BaanxError {
    let user_id = user.to_string();
    move |source| BaanxError::Vault { user_id, action, source }
}

/// The refresh lease ran out before the token could be presented.
pub(super) fn lease_lost(user: &UserId) -> BaanxError {
    BaanxError::Vault {
        user_id: user.to_string(),
        action: "present the refresh token",
        source: "the refresh lease ran out before the token call (the process was stalled)".into(),
    }
}
