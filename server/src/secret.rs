//! A secret setting (a password, a token): `Debug` shows `***`, so no log line, error or
//! settings dump can carry it by accident; only the code that hands it to its server reads it.

#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}
