//! Throwaway certificates for tests, made at run time (never commit a
//! private key): a CA, and leaf certificates it signs for a common name,
//! valid for 127.0.0.1 and localhost, usable as server and client.

use std::path::Path;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509NameBuilder, X509};

use crate::SecurityConfig;

fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("pkey")
}

fn builder(cn: &str, key: &PKey<Private>) -> openssl::x509::X509Builder {
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_nid(Nid::COMMONNAME, cn).expect("cn");
    let name = name.build();
    let mut b = X509::builder().expect("x509");
    b.set_version(2).expect("v3");
    let mut serial = BigNum::new().expect("bn");
    serial
        .rand(64, MsbOption::MAYBE_ZERO, false)
        .expect("serial");
    b.set_serial_number(&serial.to_asn1_integer().expect("serial"))
        .expect("serial");
    b.set_subject_name(&name).expect("subject");
    b.set_pubkey(key).expect("pubkey");
    b.set_not_before(&Asn1Time::days_from_now(0).expect("time"))
        .expect("not before");
    b.set_not_after(&Asn1Time::days_from_now(2).expect("time"))
        .expect("not after");
    b
}

/// A certificate authority.
pub struct Ca {
    cert: X509,
    key: PKey<Private>,
}

/// A leaf certificate and its key, PEM.
pub struct Leaf {
    /// Certificate, PEM.
    pub cert: Vec<u8>,
    /// Private key, PEM (PKCS#8).
    pub key: Vec<u8>,
}

impl Ca {
    /// A new self-signed CA named `cn`.
    pub fn new(cn: &str) -> Ca {
        let key = key();
        let mut b = builder(cn, &key);
        b.set_issuer_name(
            X509NameBuilder::new()
                .map(|mut n| {
                    n.append_entry_by_nid(Nid::COMMONNAME, cn).expect("cn");
                    n.build()
                })
                .expect("issuer")
                .as_ref(),
        )
        .expect("issuer");
        b.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
            .expect("bc");
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .expect("ku"),
        )
        .expect("ku");
        b.sign(&key, MessageDigest::sha256()).expect("sign CA");
        Ca {
            cert: b.build(),
            key,
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> Vec<u8> {
        self.cert.to_pem().expect("pem")
    }

    /// A leaf for `cn`, for 127.0.0.1 and localhost, server and client use.
    pub fn issue(&self, cn: &str) -> Leaf {
        let key = key();
        let mut b = builder(cn, &key);
        b.set_issuer_name(self.cert.subject_name()).expect("issuer");
        let san = SubjectAlternativeName::new()
            .ip("127.0.0.1")
            .dns("localhost")
            .build(&b.x509v3_context(Some(&self.cert), None))
            .expect("san");
        b.append_extension(san).expect("san");
        b.append_extension(BasicConstraints::new().build().expect("bc"))
            .expect("bc");
        b.append_extension(
            ExtendedKeyUsage::new()
                .server_auth()
                .client_auth()
                .build()
                .expect("eku"),
        )
        .expect("eku");
        b.sign(&self.key, MessageDigest::sha256())
            .expect("sign leaf");
        Leaf {
            cert: b.build().to_pem().expect("pem"),
            key: key.private_key_to_pem_pkcs8().expect("key pem"),
        }
    }

    /// Writes this CA and a leaf for `cn` into `dir` as `ca.pem`,
    /// `<name>.pem`, `<name>-key.pem`; returns the config naming them.
    pub fn write(&self, dir: &Path, name: &str, cn: &str) -> SecurityConfig {
        let leaf = self.issue(cn);
        let (ca, cert, key) = (
            dir.join(format!("{}-ca.pem", name)),
            dir.join(format!("{}.pem", name)),
            dir.join(format!("{}-key.pem", name)),
        );
        std::fs::write(&ca, self.pem()).expect("write ca");
        std::fs::write(&cert, &leaf.cert).expect("write cert");
        std::fs::write(&key, &leaf.key).expect("write key");
        SecurityConfig {
            ca_path: ca.display().to_string(),
            cert_path: cert.display().to_string(),
            key_path: key.display().to_string(),
            cert_allowed_cn: Default::default(),
        }
    }
}
