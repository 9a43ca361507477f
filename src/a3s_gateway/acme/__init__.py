"""Certificates from ACME (SPEC §10.4): storage, the ACME protocol through certbot's ``acme`` library, and the
manager that issues, renews and hands certificates to the TLS entrypoints. A control-plane package: the data plane
only sees its results (certificate files loaded by ``proxy.tls.CertStore``, HTTP-01 tokens in a dictionary)."""
