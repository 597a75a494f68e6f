// TEMPORARY stand-in until the signature work lands; replaced at merge.
use std::path::Path;
#[derive(Clone, Debug)]
pub struct AllowedSigners;
impl AllowedSigners {
    pub fn parse(_text: &str) -> Result<AllowedSigners, String> {
        unimplemented!()
    }
}
#[derive(Clone, Debug)]
pub struct Signer {
    pub principal: String,
    pub fingerprint: String,
}
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("unsigned")]
    Unsigned,
}
pub fn verify_commit(
    _repository: &Path,
    _sha: &str,
    _signers: &AllowedSigners,
) -> Result<Signer, Refusal> {
    unimplemented!()
}
