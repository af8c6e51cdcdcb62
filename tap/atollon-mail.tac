# The appliance for `twistd -ny tap/atollon-mail.tac`; the configuration file is
# $ATOLLON_MAIL_CONFIG or etc/atollon-mail.ini.
from twisted.internet import reactor

from atollon_mail.config import default_config_path
from atollon_mail.tap import tac_application

application = tac_application(default_config_path(), reactor)
