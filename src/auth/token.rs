//! Bearer tokens: 256 random bits, shown to the client once, stored only as a
//! SHA-256 digest.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Every token starts with this, so that a leaked one is easy to recognise.
const PREFIX: &str = "mf_";
/// 32 bytes in unpadded base64url.
const ENCODED_LEN: usize = 43;

/// A new random token.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The stored digest of a well-formed token, or `None` when the text cannot
/// be a token at all.
pub fn digest(token: &str) -> Option<String> {
    let body = token.strip_prefix(PREFIX)?;
    if body.len() != ENCODED_LEN {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(body).ok()?;
    if bytes.len() != 32 {
        return None;
    }
    let hash = Sha256::digest(token.as_bytes());
    Some(hash.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_unique_and_well_formed() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        let da = digest(&a).expect("well formed");
        assert_eq!(da.len(), 64);
        assert_ne!(Some(da), digest(&b));
    }

    #[test]
    fn malformed_tokens_have_no_digest() {
        let good = generate();
        for bad in [
            "",
            "mf_",
            "abc",
            &good[3..],
            &good[..good.len() - 1],
            &format!("{good}A"),
            &format!("xx_{}", &good[3..]),
            &good.replace(|c: char| c.is_ascii_digit(), "*"),
        ] {
            if bad == good {
                continue;
            }
            assert_eq!(digest(bad), None, "{bad:?}");
        }
    }
}
