"""scimsync: provision users and groups from LDAP to Atlassian Cloud over SCIM 2.0."""

__version__ = "0.1.0"
