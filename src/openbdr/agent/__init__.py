"""The Linux agent daemon: keeps change tracking running between syncs and runs syncs
on an interval or on request (`openbdr agent run|sync|status`)."""
