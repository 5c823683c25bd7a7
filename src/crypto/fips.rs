//! FIPS mode: checked at startup, reported by `/status` and the admin socket.

use super::CryptoError;

/// What the daemon reports about the cryptographic module.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModuleInfo {
    /// True only when AWS-LC reports FIPS mode (checked, not assumed).
    pub fips: bool,
    /// e.g. "AWS-LC FIPS 4.2.0".
    pub module: String,
}

/// Fails unless the AWS-LC module runs in FIPS mode (power-on self tests passed).
// Security invariant: the daemon never starts on a non-FIPS module (fail closed).
pub fn require_fips_mode() -> Result<ModuleInfo, CryptoError> {
    aws_lc_rs::try_fips_mode().map_err(CryptoError::NotFips)?;
    Ok(module_info())
}

pub fn module_info() -> ModuleInfo {
    let fips = aws_lc_rs::try_fips_mode().is_ok();
    let version = aws_lc_rs::awslc_version();
    ModuleInfo {
        fips,
        module: if fips {
            format!("AWS-LC FIPS {version}")
        } else {
            format!("AWS-LC {version}")
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_is_in_fips_mode() {
        let info = require_fips_mode().unwrap();
        assert!(info.fips);
        assert!(info.module.starts_with("AWS-LC FIPS "), "{}", info.module);
    }
}
