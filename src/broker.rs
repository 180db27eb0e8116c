//! Reaching the broker: TLS and credentials, shared by robotd's link
//! ([`crate::daemon::link`], from `[mqtt]`) and the phone side
//! ([`crate::phone`], from `robotctl --ca-file/--username/--password-file`).
//!
//! TLS is rustls with the `ring` provider (no aws-lc: it needs cmake and a C
//! toolchain per target, which makes Pi cross builds fragile), trusting only
//! the CA file given (the system's roots are not used), with an optional
//! client certificate. The password is read from a file so it stays out of
//! configs, command lines and process listings; it is never logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::v5::MqttOptions;

use crate::config::Transport;

/// How to authenticate to the broker. Empty (the default): plain, anonymous.
#[derive(Debug, Clone, Default)]
pub struct BrokerAuth {
    /// PEM file of the CA certificates to trust; required for `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with `client_key`).
    pub client_cert: Option<PathBuf>,
    /// PEM private key for `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Broker user name.
    pub username: Option<String>,
    /// File holding the broker password (a trailing newline is ignored).
    pub password_file: Option<PathBuf>,
}

/// What each setting is called where the user wrote it, so an error names
/// the config key or the command-line flag to fix.
#[derive(Debug, Clone, Copy)]
pub struct SettingNames {
    pub url: &'static str,
    pub ca_file: &'static str,
    pub client_cert: &'static str,
    pub client_key: &'static str,
    pub username: &'static str,
    pub password_file: &'static str,
}

/// robotd's `[mqtt]` keys.
pub const CONFIG_KEYS: SettingNames = SettingNames {
    url: "mqtt.url",
    ca_file: "mqtt.ca_file",
    client_cert: "mqtt.client_cert",
    client_key: "mqtt.client_key",
    username: "mqtt.username",
    password_file: "mqtt.password_file",
};

/// A TLS or credential setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BrokerAuthError {
    /// A file named by a setting could not be read: check the path and that
    /// this user may read it.
    #[error("cannot read {key} file {path}: {cause}")]
    File { key: &'static str, path: PathBuf, cause: std::io::Error },
    /// A TLS file was read but holds no usable PEM item.
    #[error("{key} file {path}: {detail}")]
    Pem { key: &'static str, path: PathBuf, detail: String },
    /// Settings that do not go together (e.g. `mqtts://` without a CA file,
    /// a password file without a user name).
    #[error("{key}: {detail}")]
    Invalid { key: &'static str, detail: String },
}

impl BrokerAuth {
    /// Set the credentials and, for `transport` TLS, the TLS transport on
    /// `options`. Errors name the setting by `names`.
    pub fn apply(
        &self,
        options: &mut MqttOptions,
        transport: Transport,
        names: &SettingNames,
    ) -> Result<(), BrokerAuthError> {
        match (&self.username, &self.password_file) {
            (Some(user), password_file) => {
                let password = match password_file {
                    Some(p) => read_password(p, names.password_file)?,
                    None => String::new(),
                };
                options.set_credentials(user.clone(), password);
            }
            (None, Some(_)) => {
                return Err(BrokerAuthError::Invalid {
                    key: names.username,
                    detail: format!("{} is set without a user name", names.password_file),
                });
            }
            (None, None) => {}
        }
        match transport {
            Transport::Tls => {
                options.set_transport(rumqttc::Transport::tls_with_config(self.tls_config(names)?.into()));
            }
            Transport::Tcp if self.ca_file.is_some() || self.client_cert.is_some() => {
                return Err(BrokerAuthError::Invalid {
                    key: names.url,
                    detail: "TLS files are given but the broker URL is mqtt://; use mqtts://".into(),
                });
            }
            Transport::Tcp => {}
        }
        Ok(())
    }

    /// The rustls client configuration for this CA and client certificate.
    fn tls_config(&self, names: &SettingNames) -> Result<rustls::ClientConfig, BrokerAuthError> {
        let ca_path = self.ca_file.as_ref().ok_or_else(|| BrokerAuthError::Invalid {
            key: names.ca_file,
            detail: "mqtts:// needs the PEM file of the CA that signed the broker's certificate".into(),
        })?;
        let ca = read_file(names.ca_file, ca_path)?;
        let mut roots = rustls::RootCertStore::empty();
        let certs: Vec<_> = rustls_pemfile::certs(&mut ca.as_slice()).filter_map(Result::ok).collect();
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(BrokerAuthError::Pem {
                key: names.ca_file,
                path: ca_path.clone(),
                detail: "holds no PEM certificate".into(),
            });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(roots);
        match (&self.client_cert, &self.client_key) {
            (Some(cp), Some(kp)) => {
                let chain: Vec<_> = rustls_pemfile::certs(&mut read_file(names.client_cert, cp)?.as_slice())
                    .filter_map(Result::ok)
                    .collect();
                let key = rustls_pemfile::private_key(&mut read_file(names.client_key, kp)?.as_slice())
                    .ok()
                    .flatten()
                    .ok_or_else(|| BrokerAuthError::Pem {
                        key: names.client_key,
                        path: kp.clone(),
                        detail: "holds no PEM private key".into(),
                    })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| BrokerAuthError::Pem {
                    key: names.client_cert,
                    path: cp.clone(),
                    detail: e.to_string(),
                })
            }
            _ => Ok(builder.with_no_client_auth()),
        }
    }
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, BrokerAuthError> {
    std::fs::read(path).map_err(|cause| BrokerAuthError::File { key, path: path.to_path_buf(), cause })
}

/// The password in `path`, without its trailing newline.
fn read_password(path: &Path, key: &'static str) -> Result<String, BrokerAuthError> {
    let text = std::fs::read_to_string(path).map_err(|cause| BrokerAuthError::File {
        key,
        path: path.to_path_buf(),
        cause,
    })?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGS: SettingNames = SettingNames {
        url: "BROKER",
        ca_file: "--ca-file",
        client_cert: "--client-cert",
        client_key: "--client-key",
        username: "--username",
        password_file: "--password-file",
    };

    #[test]
    fn errors_name_the_setting_to_fix() {
        let mut o = MqttOptions::new("x", "127.0.0.1", 8883);
        let e = BrokerAuth::default().apply(&mut o, Transport::Tls, &FLAGS).unwrap_err().to_string();
        assert!(e.starts_with("--ca-file: mqtts:// needs"), "{e}");
        let auth = BrokerAuth { ca_file: Some("/nonexistent/ca.pem".into()), ..Default::default() };
        let e = auth.apply(&mut o, Transport::Tls, &FLAGS).unwrap_err().to_string();
        assert!(e.contains("--ca-file file /nonexistent/ca.pem"), "{e}");
        let e = auth.apply(&mut o, Transport::Tcp, &FLAGS).unwrap_err().to_string();
        assert!(e.contains("use mqtts://"), "{e}");
        let auth = BrokerAuth { password_file: Some("/x".into()), ..Default::default() };
        let e = auth.apply(&mut o, Transport::Tcp, &CONFIG_KEYS).unwrap_err().to_string();
        assert!(e.starts_with("mqtt.username: mqtt.password_file is set without"), "{e}");
    }

    #[test]
    fn password_file_loses_only_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, " s3 cret \r\n").unwrap();
        assert_eq!(read_password(&p, "k").unwrap(), " s3 cret ");
    }
}
