"""Mass mail: campaigns, language variants, send lists, unsubscribe and bounce handling."""
