# The appliance for `twistd -ny tap/atollon-mail.tac`; the configuration file is
# $ATOLLON_MAIL_CONFIG or etc/atollon-mail.ini.
from twisted.application import service
from twisted.internet import reactor

from atollon_mail.config import default_config_path, load_config
from atollon_mail.tap import build_appliance

application = service.Application("atollon-mail")
build_appliance(load_config(default_config_path()), reactor).setServiceParent(application)
