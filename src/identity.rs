//! The server's identity: a key pair made once and kept (0600) before it is first used, the
//! CSR sent with the registration, the application-specific machine ID, the DMI serial.

use crate::failure::{Code, Failure, io};
use crate::fsutil;
use crate::protocol::key_fingerprint;
use crate::root::Root;
use hmac::{Hmac, Mac};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use sha2::Sha256;

pub const KEY_FILE: &str = "/var/lib/gateway/identity/key.pem";
pub const CSR_FILE: &str = "/var/lib/gateway/identity/csr.pem";
pub const CERT_FILE: &str = "/var/lib/gateway/identity/cert.pem";
pub const ACCOUNT_CA_FILE: &str = "/var/lib/gateway/identity/account-ca.pem";
pub const PRIMARY_CA_FILE: &str = "/var/lib/gateway/identity/primary-ca.pem";
pub const MACHINE_ID: &str = "/etc/machine-id";
/// The app-specific machine ID as first sent to the primary, kept with the identity.
pub const MACHINE_ID_FILE: &str = "/var/lib/gateway/identity/machine-id";
pub const DMI_SERIAL: &str = "/sys/class/dmi/id/product_serial";

/// Application ID for the app-specific machine ID (as `sd_id128_get_machine_app_specific()`
/// derives it), so the primary never sees the raw /etc/machine-id.
const APP_ID: [u8; 16] = [
    0x7c, 0x3b, 0x0a, 0x4e, 0x9d, 0x8f, 0x41, 0xb2, 0xa6, 0xe5, 0xc1, 0xd0, 0xf3, 0xb2, 0x9a, 0x87,
];

pub struct Identity {
    key: KeyPair,
    /// `SHA256:<hex>` of the public key.
    pub fingerprint: String,
}

impl Identity {
    /// Loads the key pair, or makes one and stores it (fsynced) before returning it.
    pub fn load_or_create(root: &Root) -> Result<Identity, Failure> {
        let path = root.path(KEY_FILE);
        let pem = match fsutil::read_optional(&path)
            .map_err(|e| io(format!("reading {KEY_FILE}"), e))?
        {
            Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            None => {
                let key = KeyPair::generate()
                    .map_err(|e| Failure::new(Code::Internal, format!("making a key pair: {e}")))?;
                let pem = key.serialize_pem();
                fsutil::write_atomic(&path, pem.as_bytes(), 0o600)
                    .map_err(|e| io(format!("writing {KEY_FILE}"), e))?;
                log::info!(MESSAGE_ID = crate::progress::MSG_KEY_CREATED; "made this server's key pair");
                pem
            }
        };
        let key = KeyPair::from_pem(&pem).map_err(|e| {
            Failure::with_fix(Code::IdentityDamaged,
                format!("{KEY_FILE} cannot be read: {e}"),
                format!("move {KEY_FILE} away; the server then registers with a new key (an administrator must authorize it again)"))
        })?;
        let fingerprint = key_fingerprint(&rcgen::PublicKeyData::subject_public_key_info(&key));
        Ok(Identity { key, fingerprint })
    }

    /// A PKCS#10 request for this key, naming the server; also kept in csr.pem.
    pub fn csr(&self, root: &Root, hostname: &str, fqdn: Option<&str>) -> Result<String, Failure> {
        let names: Vec<String> = fqdn.into_iter().map(str::to_string).collect();
        let mut params = CertificateParams::new(names)
            .map_err(|e| Failure::new(Code::Internal, format!("making the CSR: {e}")))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, fqdn.unwrap_or(hostname));
        params.distinguished_name = dn;
        let pem = params
            .serialize_request(&self.key)
            .and_then(|csr| csr.pem())
            .map_err(|e| Failure::new(Code::Internal, format!("making the CSR: {e}")))?;
        fsutil::write_quick(&root.path(CSR_FILE), pem.as_bytes(), 0o644)
            .map_err(|e| io(format!("writing {CSR_FILE}"), e))?;
        Ok(pem)
    }

    /// The private key, PEM, for a TLS client identity.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

/// The machine ID the primary knows this server by. Made once (see [`derive_machine_id`])
/// and kept, fsynced, with the key before its first use: on a first boot cut short,
/// /etc/machine-id is not committed yet and the next boot gets a new one, but this server
/// must stay the same machine to the primary.
pub fn machine_id(root: &Root) -> Result<String, Failure> {
    let path = root.path(MACHINE_ID_FILE);
    if let Some(bytes) =
        fsutil::read_optional(&path).map_err(|e| io(format!("reading {MACHINE_ID_FILE}"), e))?
    {
        let kept = String::from_utf8_lossy(&bytes).trim().to_string();
        if kept.len() == 32 && kept.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(kept);
        }
    }
    let id = derive_machine_id(root)?;
    fsutil::write_atomic(&path, format!("{id}\n").as_bytes(), 0o644)
        .map_err(|e| io(format!("writing {MACHINE_ID_FILE}"), e))?;
    Ok(id)
}

/// The app-specific machine ID: HMAC-SHA256 keyed with the machine ID over our application
/// ID, first 16 bytes, made a version-4 UUID (what `systemd-id128 machine-id --app-specific=`
/// prints), as 32 hex digits.
pub fn derive_machine_id(root: &Root) -> Result<String, Failure> {
    let text = std::fs::read_to_string(root.path(MACHINE_ID)).unwrap_or_default();
    let text = text.trim();
    let bytes = crate::protocol::hex::decode::<16>(text);
    let Some(id) = bytes.filter(|b| b.iter().any(|&x| x != 0)) else {
        return Err(Failure::new(
            Code::NoMachineId,
            format!("{MACHINE_ID} holds no machine ID yet"),
        ));
    };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&id)
        .map_err(|e| Failure::new(Code::Internal, e.to_string()))?;
    mac.update(&APP_ID);
    let mut out: [u8; 16] = mac.finalize().into_bytes()[..16]
        .try_into()
        .unwrap_or([0; 16]);
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    Ok(crate::protocol::hex::encode(&out))
}

/// The hardware's serial number, where the firmware gives a real one.
pub fn dmi_serial(root: &Root) -> Option<String> {
    let serial = std::fs::read_to_string(root.path(DMI_SERIAL)).ok()?;
    let serial = serial.trim();
    let placeholder = serial.is_empty()
        || serial.chars().all(|c| c == '0' || c == ' ')
        || [
            "to be filled by o.e.m.",
            "not specified",
            "system serial number",
            "default string",
            "none",
            "n/a",
        ]
        .contains(&serial.to_ascii_lowercase().as_str());
    (!placeholder && serial.len() <= 128).then(|| serial.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_id_is_app_specific_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        std::fs::create_dir_all(root.path("/etc")).unwrap();
        assert_eq!(machine_id(&root).unwrap_err().code, Code::NoMachineId);
        std::fs::write(root.path(MACHINE_ID), "uninitialized\n").unwrap();
        assert_eq!(machine_id(&root).unwrap_err().code, Code::NoMachineId);
        std::fs::write(root.path(MACHINE_ID), "0123456789abcdef0123456789abcdef\n").unwrap();
        let a = machine_id(&root).unwrap();
        // A first boot cut short: systemd makes another machine ID; ours stays.
        std::fs::write(root.path(MACHINE_ID), "fedcba9876543210fedcba9876543210\n").unwrap();
        assert_eq!(machine_id(&root).unwrap(), a);
        assert_ne!(derive_machine_id(&root).unwrap(), a);
        assert_eq!(a, machine_id(&root).unwrap());
        assert_eq!(a.len(), 32);
        assert!(!a.contains("0123456789abcdef"), "never the raw ID");
        assert_eq!(&a[12..13], "4", "a version-4 UUID");
    }

    #[test]
    fn the_key_is_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        let first = Identity::load_or_create(&root).unwrap();
        let second = Identity::load_or_create(&root).unwrap();
        assert_eq!(first.fingerprint, second.fingerprint);
        let mode = std::fs::metadata(root.path(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let csr = first.csr(&root, "gw01", Some("gw01.acme.lan")).unwrap();
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    }

    #[test]
    fn placeholder_serials_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        std::fs::create_dir_all(root.path("/sys/class/dmi/id")).unwrap();
        for (text, want) in [
            ("SN-42\n", Some("SN-42")),
            ("To Be Filled By O.E.M.", None),
            ("0000000", None),
            ("", None),
        ] {
            std::fs::write(root.path(DMI_SERIAL), text).unwrap();
            assert_eq!(dmi_serial(&root).as_deref(), want, "{text:?}");
        }
    }
}
