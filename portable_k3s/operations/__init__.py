"""The library's operations (importing them changes nothing of pyinfra; see ``portable_k3s.adapter``)."""
