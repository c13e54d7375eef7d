"""Test infrastructure that e2e scripts reuse: a real local control plane and its PKI."""
