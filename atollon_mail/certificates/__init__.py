"""Certificates from an ACME CA ([tls] acme): the HTTP-01 challenge answers the web
service serves, the synchronous ACME exchange run in a worker thread, and the service
that renews the certificate and hands it to the listeners' ReloadableTLSOptions."""
