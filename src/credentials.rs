//! Users and API tokens as records of the replicated state: their system keys, their encoding,
//! password hashes and token digests (see "Users and API tokens" in `docs/ARCHITECTURE.md`).
//!
//! A user is the system key `user/<name>` holding a [`UserRecord`]: its role and an argon2 hash of
//! its password (a PHC string, with a random salt per hash). A token is the system key
//! `token/<hex of its SHA-256 digest>` holding a [`TokenRecord`]: its name, role, creation and
//! optional expiry. The token itself, `rkv_` and 64 hex digits of a 256-bit random secret, is
//! drawn by the client that asks for it ([`new_token`]) and shown once; only its digest crosses
//! the network and enters the state.
//!
//! Invariants:
//! - No password and no token is ever stored or logged in clear: the state holds argon2 hashes
//!   and SHA-256 digests, and [`crate::wire::client::Secret`] hides a password from `Debug`.
//! - Records are postcard-encoded structs; a record that does not decode refuses the credential
//!   (an error), it never grants a role.
//! - Names are short and plain ([`check_name`]): no `:` (HTTP Basic's separator), no spaces.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::storage::system_keys::{system_family_prefix, system_key};
use crate::wire::client::{ClientRole, TokenInfo, UserInfo};
use crate::wire::message::RequestId;

/// The record family of users in the system keyspace.
pub const USER_FAMILY: &str = "user";
/// The record family of API tokens in the system keyspace.
pub const TOKEN_FAMILY: &str = "token";
/// What every token starts with, so a leaked one is recognisable (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "rkv_";
/// Bytes of randomness in a token: 256 bits.
pub const TOKEN_SECRET_BYTES: usize = 32;
/// Hex digits of the digest that name a token in `kvctl token list|revoke`.
pub const TOKEN_ID_DIGITS: usize = 12;
/// Longest user or token name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest password, in bytes (argon2 hashes any length; this bounds what a request may carry).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A user, as stored under its system key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub role: ClientRole,
    /// The argon2id hash of the password, as a PHC string (algorithm, parameters, salt, hash).
    pub password_hash: String,
    /// When the user was added, in milliseconds since the Unix epoch (the primary's clock).
    pub created_ms: u64,
    /// The request that last wrote this record: a retry of that same request is recognised as
    /// such (and answered by the sessions table) rather than refused as a duplicate name.
    pub written_by: RequestId,
}

/// An API token, as stored under the system key of its digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    pub role: ClientRole,
    pub created_ms: u64,
    /// When the token stops being accepted, in milliseconds since the Unix epoch.
    pub expires_ms: Option<u64>,
}

/// The system key of user `name`.
pub fn user_key(name: &str) -> Vec<u8> {
    system_key(USER_FAMILY, name.as_bytes())
}

/// The system key of the token with `digest`.
pub fn token_key(digest: &[u8; 32]) -> Vec<u8> {
    system_key(TOKEN_FAMILY, hex(digest).as_bytes())
}

/// The name of the record under `key` in `family`, if `key` is one of that family's.
pub fn record_name(family: &str, key: &[u8]) -> Option<String> {
    let name = key.strip_prefix(system_family_prefix(family).as_slice())?;
    String::from_utf8(name.to_vec()).ok()
}

/// Encodes a record for the state.
pub fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(record)
        .map_err(|err| Error::Internal(format!("cannot encode a credential record: {err}")))
}

/// Decodes a record from the state.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|err| {
        Error::Internal(format!(
            "a credential record in the state does not decode: {err}"
        ))
    })
}

/// Checks a user or token name: 1 to [`MAX_NAME_CHARS`] of letters, digits and `_ . @ -`.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-');
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || !name.chars().all(plain) {
        return Err(Error::InvalidRequest(format!(
            "{what} name {name:?} must be 1 to {MAX_NAME_CHARS} letters, digits, '_', '.', '@' or '-'"
        )));
    }
    Ok(())
}

/// Checks a password's length: not empty, at most [`MAX_PASSWORD_BYTES`].
pub fn check_password(password: &str) -> Result<()> {
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::InvalidRequest(format!(
            "a password must have 1 to {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The argon2id hash of `password` with a fresh random salt, as a PHC string. Slow on purpose
/// (tens of milliseconds): call it off the async threads.
pub fn hash_password(password: &str) -> Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|err| Error::Internal(format!("cannot make a password salt: {err}")))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| Error::Internal(format!("cannot hash a password: {err}")))
}

/// Whether `password` matches the PHC string `password_hash`. Slow on purpose, like
/// [`hash_password`]. A hash that does not parse matches nothing.
pub fn password_matches(password: &[u8], password_hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(password_hash).is_ok_and(|parsed| {
        argon2::Argon2::default()
            .verify_password(password, &parsed)
            .is_ok()
    })
}

/// A new token: `rkv_` and the hex digits of 256 random bits, from the operating system's
/// generator.
pub fn new_token() -> String {
    use rand::RngCore;
    let mut secret = [0u8; TOKEN_SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    format!("{TOKEN_PREFIX}{}", hex(&secret))
}

/// The SHA-256 digest of a token as presented: what the state keys it by. Any text has a digest;
/// one that names no token is simply not found.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// The short id of the token with `digest`.
pub fn token_id(digest: &[u8; 32]) -> String {
    hex(digest)[..TOKEN_ID_DIGITS].to_string()
}

/// The SHA-256 digest of a password, to key a cache of verified passwords without keeping them.
pub fn password_digest(password: &[u8]) -> [u8; 32] {
    Sha256::digest(password).into()
}

/// Lowercase hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The digest named by the hex of a token's system key name.
pub fn digest_of_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(digest)
}

impl UserRecord {
    pub fn info(&self, name: String) -> UserInfo {
        UserInfo {
            name,
            role: self.role,
            created_ms: self.created_ms,
        }
    }
}

impl TokenRecord {
    pub fn info(&self, digest: &[u8; 32]) -> TokenInfo {
        TokenInfo {
            id: token_id(digest),
            name: self.name.clone(),
            role: self.role,
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
        }
    }

    /// Whether the token is past its expiry at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|expires| now_ms >= expires)
    }
}

/// Milliseconds since the Unix epoch on this machine's clock (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_matches_its_own_hash_only() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(password_matches(b"correct horse", &hash));
        assert!(!password_matches(b"correct hors", &hash));
        assert!(!password_matches(b"correct horse", "not a phc string"));
        // A fresh salt each time: the same password hashes differently.
        assert_ne!(hash, hash_password("correct horse").unwrap());
    }

    #[test]
    fn tokens_are_256_random_bits_keyed_by_their_digest() {
        let token = new_token();
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(token.len(), TOKEN_PREFIX.len() + 2 * TOKEN_SECRET_BYTES);
        assert_ne!(token, new_token());
        let digest = token_digest(&token);
        assert_eq!(digest, token_digest(&format!(" {token}\n")));
        let key = token_key(&digest);
        let name = record_name(TOKEN_FAMILY, &key).unwrap();
        assert_eq!(digest_of_hex(&name), Some(digest));
        assert!(hex(&digest).starts_with(&token_id(&digest)));
        assert_eq!(record_name(USER_FAMILY, &key), None);
    }

    #[test]
    fn names_are_plain() {
        assert!(check_name("user", "alice.b@example-1_x").is_ok());
        for bad in ["", "a:b", "a b", "é", &"x".repeat(MAX_NAME_CHARS + 1)] {
            assert!(check_name("user", bad).is_err(), "{bad:?}");
        }
        assert!(check_password("").is_err());
        assert!(check_password(&"p".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }

    #[test]
    fn records_round_trip_and_expire() {
        let token = TokenRecord {
            name: "ci".into(),
            role: ClientRole::ReadOnly,
            created_ms: 10,
            expires_ms: Some(20),
        };
        let decoded: TokenRecord = decode(&encode(&token).unwrap()).unwrap();
        assert_eq!(decoded, token);
        assert!(!token.expired(19));
        assert!(token.expired(20));
        assert!(decode::<UserRecord>(b"\xff\xff\xff").is_err());
    }
}
