"""Identity and access: users, roles, group scopes, staff login sessions, lockout and audit."""
