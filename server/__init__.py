"""The appliance side of airgap (``airgap serve``): the FTP drop box."""
