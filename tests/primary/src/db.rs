//! The simulator's state in SQLite: accounts (each with its CA), API keys, servers, faults.
//! Every subcommand opens the same file, so `authorize` or `faults set` from a shell act on a
//! running `serve` at once (WAL mode, a busy timeout for the writers).

use anyhow::{Context, Result, bail};
use gateway_protocol::{DnsStatus, KeyKind, ServerRecord, TrustState};
use rand::Rng;
use rand::distr::Alphanumeric;
use rusqlite::{Connection, OptionalExtension, params};
use std::net::IpAddr;
use std::path::Path;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY,
    domain TEXT UNIQUE NOT NULL,
    ca_cert TEXT NOT NULL,
    ca_key TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    id INTEGER PRIMARY KEY,
    key TEXT UNIQUE NOT NULL,
    account_id INTEGER REFERENCES accounts(id),
    kind TEXT NOT NULL CHECK (kind IN ('restricted', 'full')),
    auto_trust INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER,
    allow_ip TEXT,
    is_default INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS servers (
    id TEXT PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    machine_id TEXT NOT NULL,
    hostname TEXT NOT NULL,
    fqdn TEXT,
    addresses TEXT NOT NULL,
    dns TEXT NOT NULL,
    serial TEXT,
    agent_version TEXT NOT NULL,
    csr TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('untrusted', 'trusted', 'rejected')),
    token TEXT NOT NULL,
    certificate TEXT,
    registered_at INTEGER NOT NULL,
    authorized_at INTEGER,
    last_secure_at INTEGER,
    secure_contacts INTEGER NOT NULL DEFAULT 0,
    registrations INTEGER NOT NULL DEFAULT 1,
    hardware_id TEXT,
    replaces TEXT,
    renewals INTEGER NOT NULL DEFAULT 0,
    certificate_expires INTEGER,
    UNIQUE (account_id, machine_id)
);
CREATE TABLE IF NOT EXISTS faults (id INTEGER PRIMARY KEY CHECK (id = 1), json TEXT NOT NULL);
";

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

pub fn random_token(prefix: &str, len: usize) -> String {
    let body: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect();
    format!("{prefix}{body}")
}

pub struct Db {
    pub conn: Connection,
}

#[derive(Debug, Clone)]
pub struct Account {
    pub id: i64,
    pub domain: String,
    pub ca_cert: String,
    pub ca_key: String,
}

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub key: String,
    pub account_id: Option<i64>,
    pub account: Option<String>,
    pub kind: KeyKind,
    pub auto_trust: bool,
    pub expires_at: Option<i64>,
    pub allow_ip: Option<String>,
    pub is_default: bool,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub record: ServerRecord,
    pub account_id: i64,
    pub machine_id: String,
    pub csr: String,
    pub token: String,
    pub certificate: Option<String>,
    pub secure_contacts: i64,
    pub registrations: i64,
    /// The agent's app-specific ID of the DMI product UUID, where it sent one.
    pub hardware_id: Option<String>,
}

fn kind_str(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Restricted => "restricted",
        KeyKind::Full => "full",
    }
}

pub fn state_str(state: TrustState) -> &'static str {
    match state {
        TrustState::Untrusted => "untrusted",
        TrustState::Trusted => "trusted",
        TrustState::Rejected => "rejected",
    }
}

fn parse_state(s: &str) -> TrustState {
    match s {
        "trusted" => TrustState::Trusted,
        "rejected" => TrustState::Rejected,
        _ => TrustState::Untrusted,
    }
}

const SERVER_COLUMNS: &str = "s.id, a.domain, s.state, s.hostname, s.fqdn, s.addresses, s.dns, s.serial, \
    s.agent_version, s.key_fingerprint, s.registered_at, s.authorized_at, s.last_secure_at, \
    s.account_id, s.machine_id, s.csr, s.token, s.certificate, s.secure_contacts, s.registrations, \
    s.hardware_id, s.replaces, s.renewals, s.certificate_expires";

/// Columns added after the first release of the schema, for a database made before them.
const ADDED_SERVER_COLUMNS: &[(&str, &str)] = &[
    ("hardware_id", "TEXT"),
    ("replaces", "TEXT"),
    ("renewals", "INTEGER NOT NULL DEFAULT 0"),
    ("certificate_expires", "INTEGER"),
];

fn server_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Server> {
    let addresses: String = row.get(5)?;
    let dns: String = row.get(6)?;
    let state: String = row.get(2)?;
    Ok(Server {
        record: ServerRecord {
            server_id: row.get(0)?,
            account: row.get(1)?,
            state: parse_state(&state),
            hostname: row.get(3)?,
            fqdn: row.get(4)?,
            addresses: serde_json::from_str::<Vec<IpAddr>>(&addresses).unwrap_or_default(),
            dns: serde_json::from_value(serde_json::Value::String(dns)).unwrap_or(DnsStatus::Error),
            serial: row.get(7)?,
            agent_version: row.get(8)?,
            key_fingerprint: row.get(9)?,
            registered_at: rfc3339(row.get(10)?),
            authorized_at: row.get::<_, Option<i64>>(11)?.map(rfc3339),
            last_secure_contact: row.get::<_, Option<i64>>(12)?.map(rfc3339),
            replaces: row.get(21)?,
            renewals: row.get(22)?,
            certificate_expires: row.get::<_, Option<i64>>(23)?.map(rfc3339),
        },
        hardware_id: row.get(20)?,
        account_id: row.get(13)?,
        machine_id: row.get(14)?,
        csr: row.get(15)?,
        token: row.get(16)?,
        certificate: row.get(17)?,
        secure_contacts: row.get(18)?,
        registrations: row.get(19)?,
    })
}

impl Db {
    pub fn open(path: &Path) -> Result<Db> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening database {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.execute_batch(SCHEMA).context("creating the schema")?;
        for (name, kind) in ADDED_SERVER_COLUMNS {
            let present: bool = conn.query_row(
                "SELECT COUNT(*) FROM pragma_table_info('servers') WHERE name = ?1",
                [name],
                |r| r.get::<_, i64>(0),
            )? > 0;
            if !present {
                conn.execute_batch(&format!("ALTER TABLE servers ADD COLUMN {name} {kind}"))
                    .with_context(|| format!("adding column servers.{name}"))?;
            }
        }
        Ok(Db { conn })
    }

    pub fn meta(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?)
    }

    pub fn set_meta(&self, name: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            params![name, value],
        )?;
        Ok(())
    }

    /// The deployment's default restricted key: created on first use, or set to `wanted`.
    /// Returns the key and whether it was new.
    pub fn ensure_default_key(&self, wanted: Option<&str>) -> Result<(String, bool)> {
        let current: Option<String> = self
            .conn
            .query_row("SELECT key FROM keys WHERE is_default = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        match (current, wanted) {
            (Some(cur), Some(w)) if cur != w => {
                self.conn
                    .execute("UPDATE keys SET key = ?1 WHERE is_default = 1", [w])?;
                Ok((w.to_string(), true))
            }
            (Some(cur), _) => Ok((cur, false)),
            (None, wanted) => {
                let key = wanted
                    .map(str::to_string)
                    .unwrap_or_else(|| random_token("gwk_default_", 24));
                self.conn.execute(
                    "INSERT INTO keys (key, account_id, kind, is_default, created_at) VALUES (?1, NULL, 'restricted', 1, ?2)",
                    params![key, now()],
                )?;
                Ok((key, true))
            }
        }
    }

    pub fn add_account(&self, domain: &str, ca_cert: &str, ca_key: &str) -> Result<()> {
        let exists: bool = self.conn.query_row(
            "SELECT COUNT(*) FROM accounts WHERE domain = ?1",
            [domain],
            |r| r.get::<_, i64>(0),
        )? > 0;
        if exists {
            bail!("account {domain} exists already");
        }
        self.conn.execute(
            "INSERT INTO accounts (domain, ca_cert, ca_key, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![domain, ca_cert, ca_key, now()],
        )?;
        Ok(())
    }

    fn account_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
        Ok(Account {
            id: r.get(0)?,
            domain: r.get(1)?,
            ca_cert: r.get(2)?,
            ca_key: r.get(3)?,
        })
    }

    fn accounts_where(&self, clause: &str, param: &dyn rusqlite::ToSql) -> Result<Vec<Account>> {
        let sql = format!(
            "SELECT id, domain, ca_cert, ca_key FROM accounts WHERE {clause} ORDER BY domain"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([param], Self::account_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn account(&self, domain: &str) -> Result<Option<Account>> {
        Ok(self
            .accounts_where("domain = ?1", &domain)?
            .into_iter()
            .next())
    }

    pub fn account_by_id(&self, id: i64) -> Result<Account> {
        self.accounts_where("id = ?1", &id)?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no account with id {id}"))
    }

    pub fn accounts(&self) -> Result<Vec<Account>> {
        self.accounts_where("?1 = 1", &1)
    }

    /// A stamp that changes whenever accounts are added (their CAs feed the TLS verifier).
    pub fn accounts_stamp(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM accounts", [], |r| {
                r.get(0)
            })?)
    }

    pub fn add_key(&self, key: &ApiKey) -> Result<()> {
        self.conn.execute(
            "INSERT INTO keys (key, account_id, kind, auto_trust, expires_at, allow_ip, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![key.key, key.account_id, kind_str(key.kind), key.auto_trust, key.expires_at, key.allow_ip, now()],
        )?;
        Ok(())
    }

    fn key_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKey> {
        let kind: String = r.get(3)?;
        Ok(ApiKey {
            key: r.get(0)?,
            account_id: r.get(1)?,
            account: r.get(2)?,
            kind: if kind == "full" {
                KeyKind::Full
            } else {
                KeyKind::Restricted
            },
            auto_trust: r.get(4)?,
            expires_at: r.get(5)?,
            allow_ip: r.get(6)?,
            is_default: r.get(7)?,
        })
    }

    pub fn key(&self, key: &str) -> Result<Option<ApiKey>> {
        Ok(self
            .conn
            .query_row(
                "SELECT k.key, k.account_id, a.domain, k.kind, k.auto_trust, k.expires_at, k.allow_ip, k.is_default \
                 FROM keys k LEFT JOIN accounts a ON a.id = k.account_id WHERE k.key = ?1",
                [key],
                Self::key_from_row,
            )
            .optional()?)
    }

    pub fn keys(&self) -> Result<Vec<ApiKey>> {
        let mut stmt = self.conn.prepare(
            "SELECT k.key, k.account_id, a.domain, k.kind, k.auto_trust, k.expires_at, k.allow_ip, k.is_default \
             FROM keys k LEFT JOIN accounts a ON a.id = k.account_id ORDER BY k.is_default DESC, k.id",
        )?;
        let rows = stmt.query_map([], Self::key_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn server_where(&self, clause: &str, param: &dyn rusqlite::ToSql) -> Result<Option<Server>> {
        let sql = format!(
            "SELECT {SERVER_COLUMNS} FROM servers s JOIN accounts a ON a.id = s.account_id WHERE {clause}"
        );
        Ok(self
            .conn
            .query_row(&sql, [param], server_from_row)
            .optional()?)
    }

    pub fn server(&self, id: &str) -> Result<Option<Server>> {
        self.server_where("s.id = ?1", &id)
    }

    /// A server by id, or by a host name or FQDN that names exactly one server.
    pub fn find_server(&self, name: &str) -> Result<Server> {
        if let Some(s) = self.server(name)? {
            return Ok(s);
        }
        let all = self.servers(None)?;
        let matches: Vec<&Server> = all
            .iter()
            .filter(|s| s.record.hostname == name || s.record.fqdn.as_deref() == Some(name))
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => bail!("no server {name}"),
            _ => bail!("{name} names {} servers; give the server id", matches.len()),
        }
    }

    pub fn server_by_machine(&self, account_id: i64, machine_id: &str) -> Result<Option<Server>> {
        let sql = format!(
            "SELECT {SERVER_COLUMNS} FROM servers s JOIN accounts a ON a.id = s.account_id WHERE s.account_id = ?1 AND s.machine_id = ?2"
        );
        Ok(self
            .conn
            .query_row(&sql, params![account_id, machine_id], server_from_row)
            .optional()?)
    }

    pub fn servers(&self, account_id: Option<i64>) -> Result<Vec<Server>> {
        let sql = format!(
            "SELECT {SERVER_COLUMNS} FROM servers s JOIN accounts a ON a.id = s.account_id \
             WHERE ?1 IS NULL OR s.account_id = ?1 ORDER BY a.domain, s.hostname, s.id"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([account_id], server_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn insert_server(&self, s: &Server) -> Result<()> {
        let r = &s.record;
        self.conn.execute(
            "INSERT INTO servers (id, account_id, machine_id, hostname, fqdn, addresses, dns, serial, agent_version, csr, \
             key_fingerprint, state, token, certificate, registered_at, authorized_at, hardware_id, replaces, \
             certificate_expires) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
            params![
                r.server_id,
                s.account_id,
                s.machine_id,
                r.hostname,
                r.fqdn,
                serde_json::to_string(&r.addresses)?,
                serde_json::to_value(r.dns)?.as_str().unwrap_or("error"),
                r.serial,
                r.agent_version,
                s.csr,
                r.key_fingerprint,
                state_str(r.state),
                s.token,
                s.certificate,
                now(),
                r.authorized_at.as_ref().map(|_| now()),
                s.hardware_id,
                r.replaces,
                s.certificate
                    .as_deref()
                    .map(crate::pki::pem_not_after)
                    .transpose()?,
            ],
        )?;
        Ok(())
    }

    /// Records a repeated registration: new facts, and the CSR when it changed.
    pub fn update_registration(&self, s: &Server) -> Result<()> {
        let r = &s.record;
        self.conn.execute(
            "UPDATE servers SET hostname = ?2, fqdn = ?3, addresses = ?4, dns = ?5, serial = ?6, agent_version = ?7, \
             csr = ?8, key_fingerprint = ?9, hardware_id = ?10, registrations = registrations + 1 WHERE id = ?1",
            params![
                r.server_id,
                r.hostname,
                r.fqdn,
                serde_json::to_string(&r.addresses)?,
                serde_json::to_value(r.dns)?.as_str().unwrap_or("error"),
                r.serial,
                r.agent_version,
                s.csr,
                r.key_fingerprint,
                s.hardware_id,
            ],
        )?;
        Ok(())
    }

    /// The other servers of `account_id` on the same hardware as a registration's: the same
    /// hardware ID, and the same serial where both have one. Trusted ones first, then the
    /// newest.
    pub fn same_hardware(
        &self,
        account_id: i64,
        hardware_id: Option<&str>,
        serial: Option<&str>,
        except: &str,
    ) -> Result<Vec<Server>> {
        let Some(hardware_id) = hardware_id else {
            return Ok(Vec::new());
        };
        let sql = format!(
            "SELECT {SERVER_COLUMNS} FROM servers s JOIN accounts a ON a.id = s.account_id \
             WHERE s.account_id = ?1 AND s.hardware_id = ?2 AND s.id != ?3 \
             AND (?4 IS NULL OR s.serial IS NULL OR s.serial = ?4) \
             ORDER BY s.state = 'trusted' DESC, s.registered_at DESC, s.rowid DESC"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(
            params![account_id, hardware_id, except, serial],
            server_from_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn set_trust(&self, id: &str, state: TrustState, certificate: Option<&str>) -> Result<()> {
        let authorized = (state == TrustState::Trusted).then(now);
        let expires = certificate.map(crate::pki::pem_not_after).transpose()?;
        self.conn.execute(
            "UPDATE servers SET state = ?2, certificate = ?3, authorized_at = COALESCE(?4, authorized_at), \
             certificate_expires = ?5 WHERE id = ?1",
            params![id, state_str(state), certificate, authorized, expires],
        )?;
        Ok(())
    }

    /// A renewal: the server's new certificate, its notAfter, one more renewal counted.
    pub fn renew_certificate(&self, id: &str, certificate: &str) -> Result<i64> {
        let expires = crate::pki::pem_not_after(certificate)?;
        self.conn.execute(
            "UPDATE servers SET certificate = ?2, certificate_expires = ?3, renewals = renewals + 1 WHERE id = ?1",
            params![id, certificate, expires],
        )?;
        Ok(expires)
    }

    /// A re-enrolment: back to `untrusted` with the new CSR and its key, no certificate, not
    /// authorized, until an administrator authorizes it again.
    pub fn re_enrol(&self, id: &str, csr: &str, key_fingerprint: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE servers SET state = 'untrusted', certificate = NULL, certificate_expires = NULL, \
             authorized_at = NULL, csr = ?2, key_fingerprint = ?3 WHERE id = ?1",
            params![id, csr, key_fingerprint],
        )?;
        Ok(())
    }

    /// `serve --cert-lifetime`, in seconds, for the processes that sign without serving (the
    /// `authorize` subcommand); a year until a `serve` stored one.
    pub fn cert_lifetime(&self) -> Result<i64> {
        Ok(self
            .meta("cert_lifetime_secs")?
            .and_then(|v| v.parse().ok())
            .filter(|&v: &i64| v > 0)
            .unwrap_or(crate::pki::DEFAULT_LIFETIME_SECS))
    }

    pub fn set_cert_lifetime(&self, secs: i64) -> Result<()> {
        self.set_meta("cert_lifetime_secs", &secs.to_string())
    }

    /// Removes a server's record (its token and certificate go with it). Returns whether
    /// there was one.
    pub fn remove_server(&self, id: &str) -> Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM servers WHERE id = ?1", [id])?
            > 0)
    }

    pub fn record_secure_contact(&self, id: &str) -> Result<i64> {
        let at = now();
        self.conn.execute(
            "UPDATE servers SET last_secure_at = ?2, secure_contacts = secure_contacts + 1 WHERE id = ?1",
            params![id, at],
        )?;
        Ok(at)
    }

    pub fn faults_json(&self) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT json FROM faults WHERE id = 1", [], |r| r.get(0))
            .optional()?)
    }

    pub fn set_faults_json(&self, json: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO faults (id, json) VALUES (1, ?1) ON CONFLICT(id) DO UPDATE SET json = excluded.json",
            [json],
        )?;
        Ok(())
    }
}
