"""Import every model so the metadata is complete (Alembic, tests)."""
from .accounts.models import LoginThrottle, RecoveryCode, StaffSession, StaffUser  # noqa: F401
from .audit.models import AuditEntry, AuditHead  # noqa: F401
from .catalog.models import BuyerDay, Category, Product, ProductImage  # noqa: F401
from .inventory.models import CardKey, KeyImport  # noqa: F401
from .orders.models import Order  # noqa: F401
from .payments.models import Payment, PaymentChannel, SettlementEntry, SettlementReport  # noqa: F401
from .settings.models import Setting, SettingSecret  # noqa: F401
from .notifications.models import EmailOutbox, Event, Notification, NotificationAttempt  # noqa: F401
from .scheduler.models import JobRun, SchedulerLease  # noqa: F401
from .backup.models import OpsRecord  # noqa: F401
from .operations.models import ServerProcess  # noqa: F401
from .agents.models import (Agent, AgentApiKey, AgentLevel, AgentPrice, ApiNonce, Commission,  # noqa: F401
                            LevelChange, LevelPrice, LevelRule, NewBuyerReward, PayoutAccount, Withdrawal)
from .ledger.models import LedgerAccount, LedgerEntry, LedgerTransaction  # noqa: F401
from .suppliers.models import Supplier, SupplierOrder, SupplierProduct  # noqa: F401
from .marketing.models import Coupon, CouponBuyer  # noqa: F401
from .risk.models import CaptchaUse, LookupFailure, RiskDecision, RiskRule  # noqa: F401
from .vouchers.models import Redemption, Store, StoreVerifier, Voucher, VoucherBatch, VoucherTerms  # noqa: F401
from .tickets.models import KeyReissue, Ticket, TicketImage, TicketMessage  # noqa: F401
from .reports.models import (AgentDay, CohortMonth, CouponDay, RepeatGap, ReportBuyer,  # noqa: F401
                             ReportExport, ReportExportPart, ReportProgress, RiskDay, SalesDay, SalesHour)
