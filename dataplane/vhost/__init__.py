"""vhost-user: message definitions, a sans-IO connection, and a frontend client."""
