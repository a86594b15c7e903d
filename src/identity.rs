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
pub const DMI_PRODUCT_UUID: &str = "/sys/class/dmi/id/product_uuid";
/// The hardware this identity was made on (see [`Hardware`]), kept with the identity: a box
/// that boots with other hardware is a copy (a cloned VM) and must not use it.
pub const HARDWARE_FILE: &str = "/var/lib/gateway/identity/hardware.json";

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
                // Which box it was made on: a copy of this disk booted elsewhere must not use it.
                Hardware::current(root).record(root)?;
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

/// The app-specific hardware ID, where the firmware gives a real product UUID: HMAC-SHA256
/// keyed with the UUID's 16 bytes over our application ID, as [`derive_machine_id`] does for
/// the machine ID, as 32 hex digits. The primary matches a re-imaged box (a new machine ID on
/// the same hardware) to its old record by it; the raw UUID never leaves the box.
pub fn hardware_id(root: &Root) -> Option<String> {
    let uuid = dmi_product_uuid(root)?;
    let bytes = crate::protocol::hex::decode::<16>(&uuid.replace('-', ""))?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&bytes).ok()?;
    mac.update(&APP_ID);
    Some(crate::protocol::hex::encode(
        &mac.finalize().into_bytes()[..16],
    ))
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

/// The hardware's product UUID (SMBIOS system UUID), lowercase, where the firmware gives a
/// real one: what a hypervisor changes for each VM and a vendor sets once per board.
pub fn dmi_product_uuid(root: &Root) -> Option<String> {
    let text = std::fs::read_to_string(root.path(DMI_PRODUCT_UUID)).ok()?;
    let uuid = text.trim().to_ascii_lowercase();
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    let shaped = uuid.len() == 36 && hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    // Firmware placeholders: all zeros, all ones, and the counting pattern many boards ship.
    let placeholder = hex.bytes().all(|b| b == b'0')
        || hex.bytes().all(|b| b == b'f')
        || uuid == "03000200-0400-0500-0006-000700080009";
    (shaped && !placeholder).then_some(uuid)
}

/// Which hardware and which installation an identity belongs to. Recorded when the key pair
/// is made; compared at every boot of a provisioned box ([`Hardware::differs`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Hardware {
    /// [`dmi_product_uuid`].
    pub product_uuid: Option<String>,
    /// [`dmi_serial`].
    pub serial: Option<String>,
    /// The app-specific machine ID of /etc/machine-id as it was ([`derive_machine_id`]).
    pub machine_id: Option<String>,
    /// Whether /etc/machine-id was committed to disk then: on a first boot systemd keeps it
    /// in memory until the boot completes, and a boot cut short gets another one. Only a
    /// committed one is compared.
    pub machine_id_committed: bool,
}

impl Hardware {
    /// What this box is now.
    pub fn current(root: &Root) -> Hardware {
        Hardware {
            product_uuid: dmi_product_uuid(root),
            serial: dmi_serial(root),
            machine_id: derive_machine_id(root).ok(),
            machine_id_committed: machine_id_committed(root),
        }
    }

    /// The record kept with the identity, if there is one (an identity made before it was
    /// recorded has none: nothing to compare).
    pub fn recorded(root: &Root) -> Result<Option<Hardware>, Failure> {
        let Some(bytes) = fsutil::read_optional(&root.path(HARDWARE_FILE))
            .map_err(|e| io(format!("reading {HARDWARE_FILE}"), e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Failure::with_fix(
                Code::IdentityDamaged,
                format!("{HARDWARE_FILE} cannot be read: {e}"),
                format!("remove {HARDWARE_FILE}: the next boot records this hardware again"),
            )
        })
    }

    /// Keeps this record with the identity (fsynced).
    pub fn record(&self, root: &Root) -> Result<(), Failure> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Failure::new(Code::Internal, e.to_string()))?;
        fsutil::write_atomic(&root.path(HARDWARE_FILE), &json, 0o644)
            .map_err(|e| io(format!("writing {HARDWARE_FILE}"), e))
    }

    /// How `now` differs from this record in a way that makes it another box: a different
    /// product UUID, or (where the recorded one was committed) a different machine ID. Each
    /// difference as a phrase for the console; empty when it is the same box.
    pub fn differs(&self, now: &Hardware) -> Vec<String> {
        let mut out = Vec::new();
        if let (Some(was), Some(is)) = (&self.product_uuid, &now.product_uuid)
            && was != is
        {
            out.push(format!("the hardware's product UUID is {is}, not {was}"));
        }
        if let (Some(was), Some(is)) = (&self.machine_id, &now.machine_id)
            && self.machine_id_committed
            && was != is
        {
            out.push("/etc/machine-id is not the one the identity was made with".to_string());
        }
        out
    }
}

/// Whether /etc/machine-id is on disk for good: systemd bind-mounts a transient one over it
/// during a first boot until `systemd-machine-id-commit.service` runs.
pub fn machine_id_committed(root: &Root) -> bool {
    let Ok(mounts) = std::fs::read_to_string(root.path("/proc/self/mountinfo")) else {
        return false;
    };
    let target = root.path(MACHINE_ID);
    !mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mount_point| std::path::Path::new(mount_point) == target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hardware_id_is_app_specific_stable_and_absent_without_a_real_uuid() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        std::fs::create_dir_all(root.path("/sys/class/dmi/id")).unwrap();
        assert_eq!(hardware_id(&root), None, "no product UUID");
        let uuid = "4C4C4544-0042-3910-8057-B4C04F4E4D32";
        std::fs::write(root.path(DMI_PRODUCT_UUID), format!("{uuid}\n")).unwrap();
        let id = hardware_id(&root).unwrap();
        assert_eq!(id.len(), 32);
        assert!(!id.contains("4c4c4544"), "not the raw UUID: {id}");
        assert_eq!(hardware_id(&root), Some(id.clone()), "stable");
        std::fs::write(root.path(DMI_PRODUCT_UUID), uuid.to_ascii_lowercase()).unwrap();
        assert_eq!(hardware_id(&root), Some(id.clone()), "case does not matter");
        std::fs::write(
            root.path(DMI_PRODUCT_UUID),
            "4C4C4544-0042-3910-8057-B4C04F4E4D33",
        )
        .unwrap();
        assert_ne!(hardware_id(&root), Some(id), "another box, another ID");
        std::fs::write(
            root.path(DMI_PRODUCT_UUID),
            "00000000-0000-0000-0000-000000000000",
        )
        .unwrap();
        assert_eq!(hardware_id(&root), None, "a placeholder is no identity");
    }

    #[test]
    fn product_uuids_and_placeholders() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        std::fs::create_dir_all(root.path("/sys/class/dmi/id")).unwrap();
        assert_eq!(dmi_product_uuid(&root), None, "no file");
        for (text, want) in [
            (
                "4C4C4544-0042-3910-8057-B4C04F4E4D32\n",
                Some("4c4c4544-0042-3910-8057-b4c04f4e4d32"),
            ),
            ("00000000-0000-0000-0000-000000000000", None),
            ("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", None),
            ("03000200-0400-0500-0006-000700080009", None),
            ("not-a-uuid", None),
            ("", None),
        ] {
            std::fs::write(root.path(DMI_PRODUCT_UUID), text).unwrap();
            assert_eq!(dmi_product_uuid(&root).as_deref(), want, "{text:?}");
        }
    }

    #[test]
    fn another_box_differs_the_same_box_does_not() {
        let was = Hardware {
            product_uuid: Some("4c4c4544-0042-3910-8057-b4c04f4e4d32".into()),
            serial: Some("SN-1".into()),
            machine_id: Some("a".repeat(32)),
            machine_id_committed: true,
        };
        assert!(was.differs(&was.clone()).is_empty());
        let copy = Hardware {
            product_uuid: Some("11111111-2222-4333-8444-555555555555".into()),
            ..was.clone()
        };
        assert_eq!(was.differs(&copy).len(), 1);
        let sysprepped = Hardware {
            machine_id: Some("b".repeat(32)),
            ..was.clone()
        };
        assert_eq!(was.differs(&sysprepped).len(), 1);
        // A first boot cut short before systemd committed the machine ID: not a copy.
        let uncommitted = Hardware {
            machine_id_committed: false,
            ..was.clone()
        };
        assert!(uncommitted.differs(&sysprepped).is_empty());
        // Firmware without a UUID on either side: nothing to compare there.
        let none = Hardware {
            product_uuid: None,
            ..was.clone()
        };
        assert!(none.differs(&copy).is_empty());
        assert!(copy.differs(&none).is_empty());
        // The serial alone says nothing: a vendor may give every box the same.
        let other_serial = Hardware {
            serial: Some("SN-2".into()),
            ..was.clone()
        };
        assert!(was.differs(&other_serial).is_empty());
    }

    #[test]
    fn a_transient_machine_id_is_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        std::fs::create_dir_all(root.path("/proc/self")).unwrap();
        let target = root.path(MACHINE_ID);
        std::fs::write(
            root.path("/proc/self/mountinfo"),
            format!("25 1 0:22 / / rw - ext4 /dev/vda1 rw\n40 25 0:30 /machine-id {} ro - tmpfs tmpfs ro\n", target.display()),
        )
        .unwrap();
        assert!(!machine_id_committed(&root));
        std::fs::write(
            root.path("/proc/self/mountinfo"),
            "25 1 0:22 / / rw - ext4 /dev/vda1 rw\n",
        )
        .unwrap();
        assert!(machine_id_committed(&root));
    }

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
