//! The rules a new account must meet. Every failed rule is reported at once,
//! per field.

use std::sync::LazyLock;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;
use validator::{Validate, ValidateEmail, ValidationError, ValidationErrors};

use super::password;
use crate::error::FieldErrors;

static USERNAME_CHARS: LazyLock<Regex> = LazyLock::new(|| {
    #[expect(
        clippy::unwrap_used,
        reason = "a constant pattern, checked by the tests"
    )]
    Regex::new(r"^[A-Za-z0-9_.\-]*$").unwrap()
});

// The derive below needs a literal; keep it in step with the hashing bound.
const _: () = assert!(password::MAX_LEN == 128);

/// What `signup` and `modelfleet user create` receive.
#[derive(Debug, Clone, Validate)]
pub struct NewAccount {
    #[validate(
        length(min = 3, max = 32, message = "must be 3 to 32 characters long"),
        regex(
            path = *USERNAME_CHARS,
            message = "may contain only ASCII letters, digits, `_`, `.` and `-`"
        ),
        custom(function = "starts_with_letter")
    )]
    pub username: String,
    #[validate(custom(function = "email_address"))]
    pub email: String,
    #[validate(length(min = 8, max = 128, message = "must be 8 to 128 characters long"))]
    pub password: String,
}

fn starts_with_letter(value: &str) -> Result<(), ValidationError> {
    if value.starts_with(|c: char| c.is_ascii_alphabetic()) {
        Ok(())
    } else {
        Err(ValidationError::new("starts_with_letter")
            .with_message("must start with a letter".into()))
    }
}

fn email_address(value: &str) -> Result<(), ValidationError> {
    // Checked in the form it is compared in, so that a decomposed accent is
    // as valid as a precomposed one.
    let value: String = value.nfc().collect();
    if value.is_empty() {
        return Err(ValidationError::new("required").with_message("is required".into()));
    }
    if value.chars().count() > 254 || !value.validate_email() {
        return Err(
            ValidationError::new("email").with_message("must be a valid email address".into())
        );
    }
    Ok(())
}

impl NewAccount {
    /// The form usernames are compared in.
    pub fn username_key(&self) -> String {
        username_key(&self.username)
    }

    /// The form emails are compared in.
    pub fn email_key(&self) -> String {
        email_key(&self.email)
    }

    /// Checks every rule that needs no database, returning the failures by
    /// field (empty when all pass).
    pub fn check(&self) -> FieldErrors {
        let mut fields = match self.validate() {
            Ok(()) => FieldErrors::new(),
            Err(errors) => to_field_errors(&errors),
        };
        let name = self.username.to_lowercase();
        if !name.is_empty() && self.password.to_lowercase().contains(&name) {
            fields
                .entry("password".to_owned())
                .or_default()
                .push("must not contain the username".to_owned());
        }
        fields
    }
}

pub fn username_key(username: &str) -> String {
    username.to_ascii_lowercase()
}

/// Emails are compared after Unicode NFC normalisation and lower-casing, so
/// that look-alike spellings are one account.
pub fn email_key(email: &str) -> String {
    email.nfc().collect::<String>().to_lowercase()
}

fn to_field_errors(errors: &ValidationErrors) -> FieldErrors {
    let mut out = FieldErrors::new();
    for (field, errs) in errors.field_errors() {
        let messages = errs.iter().map(|e| {
            e.message
                .as_ref()
                .map_or_else(|| e.code.to_string(), ToString::to_string)
        });
        out.entry(field.to_string()).or_default().extend(messages);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(username: &str, email: &str, password: &str) -> NewAccount {
        NewAccount {
            username: username.to_owned(),
            email: email.to_owned(),
            password: password.to_owned(),
        }
    }

    fn messages(a: &NewAccount, field: &str) -> Vec<String> {
        a.check().remove(field).unwrap_or_default()
    }

    #[test]
    fn a_good_account_passes() {
        assert!(
            account("ada.l-9_x", "ada@example.com", "analytical engine")
                .check()
                .is_empty()
        );
    }

    #[test]
    fn username_rules() {
        let cases = [
            ("ab", "must be 3 to 32 characters long"),
            (&"a".repeat(33), "must be 3 to 32 characters long"),
            ("9lives", "must start with a letter"),
            ("_under", "must start with a letter"),
            (
                "has space",
                "may contain only ASCII letters, digits, `_`, `.` and `-`",
            ),
            (
                "zoë",
                "may contain only ASCII letters, digits, `_`, `.` and `-`",
            ),
        ];
        for (name, want) in cases {
            let got = messages(&account(name, "a@b.co", "long enough pw"), "username");
            assert!(got.iter().any(|m| m == want), "{name:?}: {got:?}");
        }
        // Several rules fail together.
        let got = messages(&account("1 ", "a@b.co", "long enough pw"), "username");
        assert_eq!(got.len(), 3, "{got:?}");
    }

    #[test]
    fn email_rules() {
        assert_eq!(
            messages(&account("ada", "", "long enough"), "email"),
            ["is required"]
        );
        for bad in ["no-at-sign", "a@", "@b.co", "a b@c.co"] {
            assert_eq!(
                messages(&account("ada", bad, "long enough"), "email"),
                ["must be a valid email address"],
                "{bad}"
            );
        }
    }

    #[test]
    fn password_rules() {
        assert_eq!(
            messages(&account("ada", "a@b.co", "short"), "password"),
            ["must be 8 to 128 characters long"]
        );
        assert_eq!(
            messages(&account("ada", "a@b.co", &"x".repeat(129)), "password"),
            ["must be 8 to 128 characters long"]
        );
        assert_eq!(
            messages(&account("Ada", "a@b.co", "my-ADA-password"), "password"),
            ["must not contain the username"]
        );
    }

    #[test]
    fn emails_compare_after_nfc_and_lower_case() {
        // "é" precomposed and as e + combining acute accent.
        let composed = "Jos\u{e9}@Example.com";
        let decomposed = "jose\u{301}@example.COM";
        assert_eq!(email_key(composed), email_key(decomposed));
        assert_eq!(username_key("AdA"), "ada");
    }
}
