//! Users and API tokens on a node: verifying a caller's password or token against the local
//! applied state, and serving the admin requests that change them as ordinary writes of system
//! keys (see "Users and API tokens" in `docs/ARCHITECTURE.md`).
//!
//! Invariants:
//! - Verification reads this node's applied state only: a user or token removed at index `i` is
//!   refused by every node that has applied `i`, and no node consults another.
//! - A password is hashed (argon2, slow on purpose) only when a caller presents it (`AUTH`, HTTP
//!   Basic) and only once per distinct password and stored hash: [`Credentials`] remembers which
//!   (user, password digest) verified against which stored hash, so a changed password or a
//!   removed user is never served from the cache. Callers already authenticated are looked up by
//!   name (users) or digest (tokens) on every request, which is a plain read, so a removal or
//!   revocation holds for open connections too.
//! - Changes are decided on the primary: a linearizable read of the record first (which a backup
//!   answers `NotPrimary`, so a client is redirected before any password is hashed), then a
//!   write of the system key at `majority`, with the caller's request id, so a retry applies once.
//!   Two concurrent changes of the same name are not serialized against each other: the later
//!   write wins.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::api::service::Service;
use crate::certs::CertRole;
use crate::client::lock;
use crate::config::tuning::CLIENT_TIMEOUT_MS;
use crate::credentials::{
    self, check_name, check_password, decode, encode, now_ms, record_name, token_key, user_key,
    TokenRecord, UserRecord, TOKEN_FAMILY, TOKEN_ID_DIGITS, USER_FAMILY,
};
use crate::error::{Error, Result};
use crate::storage::system_keys::system_family_prefix;
use crate::storage::Storage;
use crate::wire::client::{
    CredentialsRequest, ReadConsistency, Request, Response, Write, WriteConcern,
};
use crate::wire::message::RequestId;

/// Verified passwords remembered at most; past it the cache starts over.
const VERIFIED_PASSWORDS_KEPT: usize = 1024;

/// Bytes of state read per step when listing a family.
const LIST_CHUNK_BYTES: usize = 1024 * 1024;

/// What Redis answers to wrong credentials, and what every door says of them.
pub const WRONG_CREDENTIALS: &str = "invalid username-password pair or user is disabled.";

/// A user whose password a door verified. Made only by [`Credentials::authenticate`], so holding
/// one means the password was checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedUser(String);

impl VerifiedUser {
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// The SHA-256 digest of the API token a caller presented (not yet known to be valid: the
/// service looks it up on every request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenDigest(pub [u8; 32]);

impl TokenDigest {
    pub fn of(token: &str) -> TokenDigest {
        TokenDigest(credentials::token_digest(token))
    }
}

/// The node's view of users and tokens: its applied state, and the passwords it verified.
pub struct Credentials {
    storage: Arc<dyn Storage>,
    /// (user, digest of a password) → the stored hash that password verified against.
    verified: Mutex<HashMap<(String, [u8; 32]), String>>,
}

impl Credentials {
    pub fn new(storage: Arc<dyn Storage>) -> Credentials {
        Credentials {
            storage,
            verified: Mutex::new(HashMap::new()),
        }
    }

    fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        match self.storage.get(&user_key(name))? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Checks `password` for user `name` against the applied state: the user, or
    /// [`Error::Unauthenticated`] with [`WRONG_CREDENTIALS`]. Hashes only if this password has
    /// not verified against the user's current hash before (on the blocking pool).
    pub async fn authenticate(&self, name: &str, password: &[u8]) -> Result<VerifiedUser> {
        let wrong = || Error::Unauthenticated(WRONG_CREDENTIALS.into());
        let Some(record) = self.user(name)? else {
            return Err(wrong());
        };
        let cache_key = (name.to_string(), credentials::password_digest(password));
        if lock(&self.verified).get(&cache_key) == Some(&record.password_hash) {
            return Ok(VerifiedUser(name.to_string()));
        }
        let (password, hash) = (password.to_vec(), record.password_hash.clone());
        let matches =
            tokio::task::spawn_blocking(move || credentials::password_matches(&password, &hash))
                .await
                .map_err(|err| Error::Internal(format!("password check failed: {err}")))?;
        if !matches {
            return Err(wrong());
        }
        let mut verified = lock(&self.verified);
        if verified.len() >= VERIFIED_PASSWORDS_KEPT {
            verified.clear();
        }
        verified.insert(cache_key, record.password_hash);
        Ok(VerifiedUser(name.to_string()))
    }

    /// The role of an authenticated user now: refused if the user was removed since.
    pub fn role_of_user(&self, user: &VerifiedUser) -> Result<CertRole> {
        match self.user(user.name())? {
            Some(record) => Ok(record.role.into()),
            None => Err(Error::Unauthenticated(format!(
                "user {:?} no longer exists: {WRONG_CREDENTIALS}",
                user.name()
            ))),
        }
    }

    /// The role of the token with `digest`: refused if no such token is recorded (never was, or
    /// revoked) or it expired by this node's clock.
    pub fn role_of_token(&self, digest: TokenDigest) -> Result<CertRole> {
        let Some(bytes) = self.storage.get(&token_key(&digest.0))? else {
            return Err(Error::Unauthenticated(
                "unknown or revoked API token".into(),
            ));
        };
        let record: TokenRecord = decode(&bytes)?;
        if record.expired(now_ms()) {
            return Err(Error::Unauthenticated(format!(
                "API token {:?} ({}) has expired",
                record.name,
                credentials::token_id(&digest.0)
            )));
        }
        Ok(record.role.into())
    }

    /// Every record of `family` in the applied state, by key.
    fn family(&self, family: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let prefix = system_family_prefix(family);
        let mut records = Vec::new();
        let mut after = prefix.clone();
        loop {
            let chunk = self.storage.state_chunk(Some(&after), LIST_CHUNK_BYTES)?;
            let Some((last, _)) = chunk.pairs.last() else {
                return Ok(records);
            };
            after = last.clone();
            for (key, value) in chunk.pairs {
                match record_name(family, &key) {
                    Some(name) => records.push((name, value.value)),
                    None if key.starts_with(&prefix) => continue,
                    None => return Ok(records),
                }
            }
            // The chunk says whether the state goes on, so the last one costs no empty read.
            if !chunk.more {
                return Ok(records);
            }
        }
    }

    fn users(&self) -> Result<Vec<(String, UserRecord)>> {
        self.family(USER_FAMILY)?
            .into_iter()
            .map(|(name, bytes)| Ok((name, decode(&bytes)?)))
            .collect()
    }

    fn tokens(&self) -> Result<Vec<([u8; 32], TokenRecord)>> {
        self.family(TOKEN_FAMILY)?
            .into_iter()
            .filter_map(|(name, bytes)| {
                let digest = credentials::digest_of_hex(&name)?;
                Some(decode(&bytes).map(|record| (digest, record)))
            })
            .collect()
    }
}

/// Serves a user or token request, already authorized (admin only), on this node: a backup
/// answers `NotPrimary` (the client follows it), the primary reads and writes system keys.
pub(crate) async fn serve(service: &Service, request: CredentialsRequest) -> Response {
    match serve_checked(service, request).await {
        Ok(response) => response,
        Err(err) => Response::Error(err),
    }
}

async fn serve_checked(service: &Service, request: CredentialsRequest) -> Result<Response> {
    let credentials = service.credentials();
    match request {
        CredentialsRequest::UserAdd {
            request_id,
            name,
            role,
            password,
        } => {
            check_name("user", &name)?;
            check_password(&password.0)?;
            if let Some(existing) = read_user(service, &name).await? {
                if existing.written_by != request_id {
                    return Err(Error::InvalidRequest(format!(
                        "a user named {name:?} exists already: use `kvctl user passwd` or \
                         `kvctl user remove`"
                    )));
                }
            }
            let record = UserRecord {
                role,
                password_hash: hash(password.0).await?,
                created_ms: now_ms(),
                written_by: request_id,
            };
            put(service, request_id, user_key(&name), encode(&record)?).await
        }
        CredentialsRequest::UserPasswd {
            request_id,
            name,
            password,
        } => {
            check_password(&password.0)?;
            let Some(existing) = read_user(service, &name).await? else {
                return Err(no_such_user(&name));
            };
            let record = UserRecord {
                password_hash: hash(password.0).await?,
                written_by: request_id,
                ..existing
            };
            put(service, request_id, user_key(&name), encode(&record)?).await
        }
        CredentialsRequest::UserRemove { request_id, name } => {
            if read_user(service, &name).await?.is_none() {
                return Err(no_such_user(&name));
            }
            delete(service, request_id, user_key(&name)).await
        }
        CredentialsRequest::UserList => {
            barrier(service, USER_FAMILY).await?;
            let users = credentials.users()?;
            Ok(Response::Users(
                users
                    .into_iter()
                    .map(|(name, record)| record.info(name))
                    .collect(),
            ))
        }
        CredentialsRequest::TokenCreate {
            request_id,
            digest,
            name,
            role,
            ttl_ms,
        } => {
            check_name("token", &name)?;
            let created_ms = now_ms();
            let record = TokenRecord {
                name,
                role,
                created_ms,
                expires_ms: ttl_ms.map(|ttl| created_ms.saturating_add(ttl)),
            };
            put(service, request_id, token_key(&digest), encode(&record)?).await
        }
        CredentialsRequest::TokenList => {
            barrier(service, TOKEN_FAMILY).await?;
            let mut tokens: Vec<_> = credentials
                .tokens()?
                .iter()
                .map(|(digest, record)| record.info(digest))
                .collect();
            tokens.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
            Ok(Response::Tokens(tokens))
        }
        CredentialsRequest::TokenRevoke { request_id, token } => {
            barrier(service, TOKEN_FAMILY).await?;
            let tokens = credentials.tokens()?;
            let by_id = token.len() >= 4 && token.chars().all(|c| c.is_ascii_hexdigit());
            let matching: Vec<_> = tokens
                .iter()
                .filter(|(digest, record)| {
                    record.name == token
                        || (by_id && credentials::hex(digest).starts_with(&token.to_lowercase()))
                })
                .collect();
            match matching.as_slice() {
                [(digest, _)] => delete(service, request_id, token_key(digest)).await,
                [] => Err(Error::InvalidRequest(format!(
                    "no token has the name {token:?} or an id starting with it: see `kvctl \
                     token list`"
                ))),
                several => Err(Error::InvalidRequest(format!(
                    "{} tokens match {token:?}: name one by its id (the first \
                     {TOKEN_ID_DIGITS} hex digits in `kvctl token list`)",
                    several.len()
                ))),
            }
        }
    }
}

fn no_such_user(name: &str) -> Error {
    Error::InvalidRequest(format!("no user is named {name:?}: see `kvctl user list`"))
}

/// A linearizable read of a system key through the local node: the value, or the node's
/// `NotPrimary` (or other) error.
async fn read(service: &Service, key: Vec<u8>) -> Result<Option<Vec<u8>>> {
    let request = Request::Get {
        key,
        consistency: ReadConsistency::Linearizable,
    };
    match service.ask_node(request).await {
        Response::Value { value, .. } => Ok(value),
        Response::Error(err) => Err(err),
        other => Err(Error::Internal(format!(
            "unexpected answer to a read: {other:?}"
        ))),
    }
}

async fn read_user(service: &Service, name: &str) -> Result<Option<UserRecord>> {
    check_name("user", name)?;
    read(service, user_key(name))
        .await?
        .map(|bytes| decode(&bytes))
        .transpose()
}

/// A linearizable read on the primary, so that the applied state read after it reflects every
/// change acknowledged before the request (or `NotPrimary` on a backup).
async fn barrier(service: &Service, family: &str) -> Result<()> {
    read(service, system_family_prefix(family)).await.map(drop)
}

async fn hash(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || credentials::hash_password(&password))
        .await
        .map_err(|err| Error::Internal(format!("password hashing failed: {err}")))?
}

async fn put(
    service: &Service,
    request_id: RequestId,
    key: Vec<u8>,
    value: Vec<u8>,
) -> Result<Response> {
    write(service, request_id, Write::Put { key, value }).await
}

async fn delete(service: &Service, request_id: RequestId, key: Vec<u8>) -> Result<Response> {
    write(service, request_id, Write::Delete { key }).await
}

/// A write of a system key at `majority`: once acknowledged, every node that applies it knows.
async fn write(service: &Service, request_id: RequestId, write: Write) -> Result<Response> {
    let request = Request::Write {
        request_id,
        write,
        write_concern: WriteConcern::Majority,
        timeout_ms: CLIENT_TIMEOUT_MS,
    };
    match service.ask_node(request).await {
        Response::Error(err) => Err(err),
        written => Ok(written),
    }
}

#[cfg(test)]
mod tests {
    //! Verification against an applied state (the memory engine), as every node does it.

    use super::*;
    use crate::storage::MemoryStorage;
    use crate::wire::client::ClientRole;
    use crate::wire::message::{Entry, Operation};

    /// Applies `operations` as committed entries, as a node applies the primary's writes.
    fn apply(storage: &MemoryStorage, operations: Vec<Operation>) {
        let (_, last) = storage.last().unwrap();
        let entries: Vec<Entry> = operations
            .into_iter()
            .enumerate()
            .map(|(i, operation)| Entry {
                epoch: 1,
                index: last + 1 + i as u64,
                operation,
                request_id: None,
            })
            .collect();
        storage.append(&entries).unwrap();
        storage.apply(&entries).unwrap();
    }

    fn put<T: serde::Serialize>(key: Vec<u8>, record: &T) -> Operation {
        Operation::Put {
            key,
            value: encode(record).unwrap(),
        }
    }

    fn user(role: ClientRole, password: &str) -> UserRecord {
        UserRecord {
            role,
            password_hash: credentials::hash_password(password).unwrap(),
            created_ms: 1,
            written_by: RequestId {
                client_id: 1,
                sequence: 1,
            },
        }
    }

    fn setup() -> (Arc<MemoryStorage>, Credentials) {
        let storage = Arc::new(MemoryStorage::new());
        let credentials = Credentials::new(storage.clone());
        (storage, credentials)
    }

    fn refused(result: Result<CertRole>) -> String {
        match result {
            Err(Error::Unauthenticated(message)) => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_token_grants_its_role_until_revoked_or_expired() {
        let (storage, credentials) = setup();
        let (live, expired, unknown) = (
            credentials::new_token(),
            credentials::new_token(),
            credentials::new_token(),
        );
        let live_digest = credentials::token_digest(&live);
        let record = |role, expires_ms| TokenRecord {
            name: "ci".into(),
            role,
            created_ms: 1,
            expires_ms,
        };
        apply(
            &storage,
            vec![
                put(token_key(&live_digest), &record(ClientRole::ReadOnly, None)),
                put(
                    token_key(&credentials::token_digest(&expired)),
                    &record(ClientRole::Admin, Some(now_ms() - 1)),
                ),
            ],
        );
        assert_eq!(
            credentials.role_of_token(TokenDigest::of(&live)),
            Ok(CertRole::ReadOnly)
        );
        assert!(refused(credentials.role_of_token(TokenDigest::of(&expired))).contains("expired"));
        assert!(refused(credentials.role_of_token(TokenDigest::of(&unknown))).contains("unknown"));
        // Revoked: the delete applied, and the same token is refused from then on.
        apply(
            &storage,
            vec![Operation::Delete {
                key: token_key(&live_digest),
            }],
        );
        assert!(refused(credentials.role_of_token(TokenDigest::of(&live))).contains("revoked"));
    }

    #[tokio::test]
    async fn passwords_are_checked_against_the_current_hash() {
        let (storage, credentials) = setup();
        apply(
            &storage,
            vec![put(user_key("alice"), &user(ClientRole::ReadWrite, "one"))],
        );
        let wrong = credentials.authenticate("alice", b"two").await;
        assert_eq!(wrong, Err(Error::Unauthenticated(WRONG_CREDENTIALS.into())));
        assert!(credentials.authenticate("bob", b"one").await.is_err());
        let alice = credentials.authenticate("alice", b"one").await.unwrap();
        assert_eq!(credentials.role_of_user(&alice), Ok(CertRole::ReadWrite));
        // Verified once, so remembered; but a new password replaces the hash, and the old
        // password, though cached, no longer verifies.
        assert!(credentials.authenticate("alice", b"one").await.is_ok());
        apply(
            &storage,
            vec![put(user_key("alice"), &user(ClientRole::ReadOnly, "two"))],
        );
        assert!(credentials.authenticate("alice", b"one").await.is_err());
        assert!(credentials.authenticate("alice", b"two").await.is_ok());
        assert_eq!(credentials.role_of_user(&alice), Ok(CertRole::ReadOnly));
        // Removed: an open session of alice is refused from the next request on.
        apply(
            &storage,
            vec![Operation::Delete {
                key: user_key("alice"),
            }],
        );
        assert!(refused(credentials.role_of_user(&alice)).contains("no longer exists"));
        assert!(credentials.authenticate("alice", b"two").await.is_err());
    }

    #[test]
    fn listing_a_family_reads_only_that_family() {
        let (storage, credentials) = setup();
        let digest = credentials::token_digest(&credentials::new_token());
        apply(
            &storage,
            vec![
                put(user_key("bob"), &user(ClientRole::Admin, "b")),
                put(user_key("alice"), &user(ClientRole::ReadOnly, "a")),
                put(
                    token_key(&digest),
                    &TokenRecord {
                        name: "t".into(),
                        role: ClientRole::ReadOnly,
                        created_ms: 1,
                        expires_ms: None,
                    },
                ),
                Operation::Put {
                    key: b"\xff\x01past the system keyspace".to_vec(),
                    value: b"x".to_vec(),
                },
                Operation::Put {
                    key: b"user/alice".to_vec(),
                    value: b"a client's key".to_vec(),
                },
            ],
        );
        let users: Vec<_> = credentials
            .users()
            .unwrap()
            .into_iter()
            .map(|(name, record)| (name, record.role))
            .collect();
        assert_eq!(
            users,
            vec![
                ("alice".to_string(), ClientRole::ReadOnly),
                ("bob".to_string(), ClientRole::Admin)
            ]
        );
        let tokens = credentials.tokens().unwrap();
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].0, digest);
    }
}
