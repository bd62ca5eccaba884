"""Test-support helpers: a throwaway PKI and a loopback HTTP(S) stub server."""
