"""E-mail: invitations and password resets sent through SMTP from a background task."""
