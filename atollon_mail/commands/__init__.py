"""Admin commands beyond the core ones in atollon_mail.cli; each module has register()."""
